#!/usr/bin/env bash
# snapblk with xfs: mkfs, mount, write, freeze + snapshot, change, umount, restore,
# checksums equal, xfs_repair -n clean, export mounts read-only (norecovery: the freeze
# covered the log, and the loop device is read-only) and matches.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -n ${SNAPBLK_BIN:-} ]] || { skip "device-xfs" "no snapblk binary"; finish; }
S=$SNAPBLK_BIN
img=$VM_SCRATCH/xfs-disk.img
mnt=$VM_SCRATCH/xfs-mnt
sums=$VM_SCRATCH/xfs-sums
DEV= ID=

create_dev() { snapblk_create --backing "$img" --size 512M --queues 2 --direct-io; }
must "create (512M, 2 queues, O_DIRECT on backing and store)" create_dev
must "mkfs.xfs" mkfs.xfs -q -f "$DEV"
must "mount" mount_at "$DEV" "$mnt" -t xfs
write_files() {
    pattern_gen x 0 4096 >"$mnt/x.bin" && head -c 5000000 /dev/urandom >"$mnt/r.bin" && mkdir "$mnt/d" &&
        pattern_gen y 0 100 >"$mnt/d/y.txt" && sync || return 1
    (cd "$mnt" && find . -type f | sort | xargs sha256sum) >"$sums"
}
must "write 21 MiB of files, record sha256" write_files
snap() {
    xfs_io -x -c freeze "$mnt" || return 1
    "$S" snapshot create before -n "$ID"
    local rc=$?
    xfs_io -x -c thaw "$mnt"
    return $rc
}
must "freeze, snapshot create before, thaw" snap
change() {
    rm "$mnt/x.bin" && pattern_gen z 0 2048 >"$mnt/d/y.txt" && pattern_gen n 0 512 >"$mnt/new.bin" && sync
}
step "change, delete, add files" change
must "umount" umount "$mnt"
must "restore before" "$S" restore before -n "$ID"
step "after restore every sha256 matches, the new file is gone" sums_after_restore "$DEV" "$mnt" xfs "$sums" new.bin
step "xfs_repair -n clean" xfs_repair -n "$DEV"
export_check() {
    local e=$VM_SCRATCH/xfs-before.img loopdev
    "$S" export before -n "$ID" --to "$e" || return 1
    loopdev=$(/usr/sbin/losetup --find --show --read-only "$e") || return 1
    on_exit /usr/sbin/losetup -d "$loopdev"
    mount -t xfs -o ro,norecovery,nouuid "$loopdev" "$mnt" || return 1
    (cd "$mnt" && sha256sum -c "$sums")
    local rc=$?
    umount "$mnt"
    return $rc
}
step "export before; mounts read-only; every sha256 matches" export_check
delete_dev() { "$S" delete -n "$ID" && [[ ! -e $DEV ]] && T_CLEANUP=(); }
step "delete" delete_dev
finish
