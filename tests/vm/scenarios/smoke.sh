#!/usr/bin/env bash
# Smoke test of the VM itself: ublk is available, and the block-device tools the device
# scenarios rely on (loop with direct I/O, fio verify, ext4, xfs, device-mapper) work on
# this kernel, so a later failure points at snapblk, not at the harness.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

note "kernel $(uname -r), $(nproc) cpus, scratch $VM_SCRATCH"

must "ublk_drv loaded: /dev/ublk-control is a char device" test -c /dev/ublk-control

img=$VM_SCRATCH/smoke-loop.img
mnt=$VM_SCRATCH/smoke-mnt
LOOP=
must "512 MiB backing file on the scratch tmpfs" truncate -s 512M "$img"
on_exit rm -f "$img"
must "loop device with --direct-io=on over it" loop_attach LOOP "$img"
loop_dio() { expect_eq "/sys/block/${LOOP#/dev/}/loop/dio" "$(cat "/sys/block/${LOOP#/dev/}/loop/dio")" 1; }
step "loop device really does direct I/O" loop_dio

fio_verify() {
    fio --name=smoke-verify --filename="$LOOP" --rw=randwrite --bs=4k --size=16M \
        --ioengine=io_uring --iodepth=16 --direct=1 \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=1
}
step "fio randwrite 16 MiB io_uring direct, crc32c verify" fio_verify

step "pattern write + read back (O_DIRECT) at block 10000" pattern_write "$LOOP" smoke 10000 256
step "pattern read back matches" pattern_check "$LOOP" smoke 10000 256
wrong_seed() { ! pattern_check "$LOOP" other-seed 10000 256; }
step "pattern check rejects a different seed" wrong_seed

# dm holds the loop device open exclusively: remove it before mkfs/mount below.
dm_linear() {
    dm_create smoke-linear "0 $((64 * 2048)) linear $LOOP 0" || return 1
    expect_eq "sha256 of blocks 10000..10255 via dm vs loop" \
        "$(sha256_of /dev/mapper/smoke-linear 10000 256)" "$(sha256_of "$LOOP" 10000 256)" || return 1
    dm_remove smoke-linear
}
step "dm linear device over the loop reads the same bytes, then is removed" dm_linear

ext4_roundtrip() {
    mkfs.ext4 -q -F "$LOOP" || return 1
    mount_at "$LOOP" "$mnt" -t ext4 || return 1
    pattern_gen ext4 0 1024 >"$mnt/data" && sync || return 1
    local want got
    want=$(pattern_gen ext4 0 1024 | sha256sum | cut -d' ' -f1)
    umount "$mnt" && mount -t ext4 "$LOOP" "$mnt" || return 1
    got=$(sha256sum "$mnt/data" | cut -d' ' -f1)
    umount "$mnt" || return 1
    expect_eq "sha256 of $mnt/data after remount" "$got" "$want" || return 1
    e2fsck -fn "$LOOP"
}
step "mkfs.ext4, mount, write 4 MiB, remount, sha256, e2fsck -fn" ext4_roundtrip

xfs_roundtrip() {
    mkfs.xfs -q -f "$LOOP" || return 1
    mount_at "$LOOP" "$mnt" -t xfs || return 1
    pattern_gen xfs 0 1024 >"$mnt/data" && sync || return 1
    umount "$mnt" || return 1
    xfs_repair -n "$LOOP"
}
step "mkfs.xfs, mount, write, umount, xfs_repair -n" xfs_roundtrip

if [[ -n ${SNAPBLK_BIN:-} ]]; then
    step "snapblk binary runs here (--help)" "$SNAPBLK_BIN" --help
    if snapblk_has create; then
        note "snapblk supports 'create': device scenarios can run"
    else
        note "snapblk has no 'create' yet"
    fi
else
    skip "snapblk binary runs here" "target/release/snapblk not built"
fi

finish
