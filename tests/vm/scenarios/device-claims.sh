#!/usr/bin/env bash
# A block-device backing: a loop device with 4096-byte logical sectors and direct I/O, served
# with --direct-io. The ublk device advertises the backing's 4096-byte sector, so the kernel
# refuses a 512-byte direct request itself (EINVAL) instead of passing it on to fail with
# EIO under O_DIRECT; ext4 and direct I/O round-trip through snapshot and restore (issue 24,
# finding 5). While the
# daemon serves it the backing is claimed exclusively: mounting it, a second device over it
# and a remote restore onto it are refused; after the device is gone, a remote restore
# refuses a device that holds a snapblk store and works on a blank one (finding 2).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -n ${SNAPBLK_BIN:-} ]] || { skip "device-claims" "no snapblk binary"; finish; }
S=$SNAPBLK_BIN
img=$VM_SCRATCH/claims-4kn.img
store=$VM_SCRATCH/claims.store
mnt=$VM_SCRATCH/claims-mnt
sums=$VM_SCRATCH/claims-sums
remote=$VM_SCRATCH/claims-remote
URL=file://$remote
DEV= ID= LOOP=

attach_4kn() {
    truncate -s 256M "$img" || return 1
    LOOP=$(/usr/sbin/losetup --find --show --direct-io=on --sector-size 4096 "$img") || return 1
    on_exit /usr/sbin/losetup -d "$LOOP"
    echo "backing $LOOP"
}
must "loop device with 4096-byte sectors and direct I/O" attach_4kn
step "the backing has 4096-byte logical sectors" expect_eq "backing sector" "$(blockdev --getss "$LOOP")" 4096

create_dev() { snapblk_create --backing "$LOOP" --store "$store" --direct-io --queues 2; }
must "create over the 4Kn backing, --direct-io, 2 queues" create_dev
step "the device advertises 4096-byte logical sectors" expect_eq "device sector" "$(blockdev --getss "$DEV")" 4096

direct_round_trip() {
    pattern_gen d4k 10 64 | dd of="$DEV" bs=4096 seek=10 oflag=direct conv=fsync status=none || return 1
    dd if="$DEV" bs=4096 skip=10 count=64 iflag=direct status=none | cmp - <(pattern_gen d4k 10 64)
}
step "4 KiB direct writes and reads round-trip" direct_round_trip
small_read() {
    # xfs_io -d: O_DIRECT (busybox dd has no iflag=direct).
    xfs_io -d -r -c "pread 1536 512" "$DEV" >"$VM_SCRATCH/small.err" 2>&1
    cat "$VM_SCRATCH/small.err"
    grep -q "Invalid argument" "$VM_SCRATCH/small.err"
}
step "a 512-byte direct read is refused by the kernel (EINVAL), not failed by the backing (EIO)" small_read

must "mkfs.ext4" mkfs.ext4 -q -F "$DEV"
must "mount ext4" mount_at "$DEV" "$mnt" -t ext4
write_files() {
    pattern_gen a 0 2048 >"$mnt/a.bin" && head -c 3000000 /dev/urandom >"$mnt/r.bin" && sync || return 1
    (cd "$mnt" && sha256sum a.bin r.bin) >"$sums"
}
must "write files, record sha256" write_files

# ---- the backing is claimed while served --------------------------------------------
ERR=$VM_SCRATCH/claims.err
step "mounting the backing while it is served is refused" \
    bash -c "mkdir -p '$mnt-raw' && ! mount -o ro -t ext4 '$LOOP' '$mnt-raw' 2>'$ERR'; cat '$ERR'; ! mountpoint -q '$mnt-raw'"
step "a second device over the same backing is refused" \
    fails_with "already served by device $ID" "$S" create --backing "$LOOP" --store "$VM_SCRATCH/other.store" -n 9

snap() {
    fsfreeze -f "$mnt" || return 1
    "$S" snapshot create s1 -n "$ID"
    local rc=$?
    fsfreeze -u "$mnt"
    return $rc
}
must "freeze, snapshot create s1, thaw" snap

change() { rm "$mnt/a.bin" && pattern_gen b 0 1024 >"$mnt/b.bin" && sync; }
step "change files" change
must "umount" umount "$mnt"
# Shipped unmounted, so that the point is exactly snapshot s2.
must "snapshot create s2, ship --once to $URL" bash -c "'$S' snapshot create s2 -n $ID && '$S' ship -n $ID --to '$URL' --once"
step "remote restore onto the served backing is refused, naming the device" \
    fails_with "running device $ID" "$S" remote restore --from "$URL" --to "$LOOP"
must "restore s1" "$S" restore s1 -n "$ID"
step "after restore: sha256 match, b.bin gone" sums_after_restore "$DEV" "$mnt" ext4 "$sums" b.bin
must "export s2" "$S" export s2 -n "$ID" --to "$VM_SCRATCH/claims-s2.img"
must "delete the device" "$S" delete -n "$ID"
step "the backing mounts once the device is gone" \
    bash -c "mount -o ro,noload -t ext4 '$LOOP' '$mnt-raw' && umount '$mnt-raw'"

# ---- remote restore onto block devices -----------------------------------------------
store_dev() {
    STORE_LOOP=$(/usr/sbin/losetup --find --show "$store") || return 1
    on_exit /usr/sbin/losetup -d "$STORE_LOOP"
}
must "loop device over the store file" store_dev
step "remote restore onto a device holding a snapblk store is refused" \
    fails_with "holds a snapblk store" "$S" remote restore --from "$URL" --to "$STORE_LOOP"
blank_dev() {
    truncate -s 256M "$VM_SCRATCH/claims-blank.img" || return 1
    BLANK=$(/usr/sbin/losetup --find --show --sector-size 4096 "$VM_SCRATCH/claims-blank.img") || return 1
    on_exit /usr/sbin/losetup -d "$BLANK"
}
must "a blank 4Kn loop device" blank_dev
restore_blank() {
    "$S" remote restore --from "$URL" --to "$BLANK" || return 1
    cmp -n $((256 << 20)) "$BLANK" "$VM_SCRATCH/claims-s2.img"
}
step "remote restore onto a blank device equals export s2" restore_blank

finish
