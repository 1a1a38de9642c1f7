#!/usr/bin/env bash
# snapblk device end to end with ext4: create, mkfs, mount, write files, snapshot,
# change/delete files, restore refused while mounted, umount, restore, every checksum
# back, e2fsck clean, export mounts read-only and matches, delete keeps the data.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -n ${SNAPBLK_BIN:-} ]] || { skip "device-ext4" "no snapblk binary"; finish; }
S=$SNAPBLK_BIN
img=$VM_SCRATCH/ext4-disk.img
store=$img.snapstore
mnt=$VM_SCRATCH/ext4-mnt
exp_mnt=$VM_SCRATCH/ext4-export-mnt
sums=$VM_SCRATCH/ext4-sums
DEV= ID=

create_dev() { snapblk_create --backing "$img" --size 256M; }
must "snapblk create --backing (256M, default store) returns with the device present" create_dev
note "device $DEV (id $ID)"
step "store defaults to <backing>.snapstore" test -f "$store"
step "status -n shows the running device" bash -c "'$S' status -n $ID | grep -q 'id $ID, running'"
step "list shows it" bash -c "'$S' list | grep -q '$DEV'"
step "physical block size is the engine block (4096), logical 512" \
    bash -c "[[ \$(cat /sys/block/ublkb$ID/queue/physical_block_size) == 4096 && \$(cat /sys/block/ublkb$ID/queue/logical_block_size) == 512 ]]"
step "volatile write cache advertised (FLUSH reaches the daemon)" \
    bash -c "grep -q 'write back' /sys/block/ublkb$ID/queue/write_cache"
step "discard advertised" bash -c "[[ \$(cat /sys/block/ublkb$ID/queue/discard_max_bytes) -gt 0 ]]"
step "duplicate id refused with a clear message" \
    bash -c "! '$S' create --backing '$VM_SCRATCH/dup.img' --size 16M -n $ID 2>'$VM_SCRATCH/dup.err'; grep -q 'already in use' '$VM_SCRATCH/dup.err'"

must "mkfs.ext4 on the device (discards by default)" mkfs.ext4 -q -F "$DEV"
must "mount" mount_at "$DEV" "$mnt" -t ext4

write_files() {
    mkdir -p "$mnt/dir" || return 1
    pattern_gen a 0 512 >"$mnt/a.bin" || return 1
    pattern_gen b 0 2048 >"$mnt/dir/b.bin" || return 1
    pattern_gen c 0 64 >"$mnt/dir/c.txt" || return 1
    head -c 3000000 /dev/urandom >"$mnt/random.bin" || return 1
    sync
    (cd "$mnt" && find . -type f | sort | xargs sha256sum) >"$sums"
    cat "$sums"
}
must "write files (12 MiB) and record their sha256" write_files

freeze_or_sync() {
    if command -v fsfreeze >/dev/null; then
        fsfreeze -f "$mnt" && "$S" snapshot create before -n "$ID"
        local rc=$?
        fsfreeze -u "$mnt"
        return $rc
    fi
    sync && "$S" snapshot create before -n "$ID"
}
must "snapshot create before (filesystem frozen or synced)" freeze_or_sync
step "snapshot list shows it" bash -c "'$S' snapshot list -n $ID | grep -q ' before '"

change_files() {
    rm "$mnt/a.bin" || return 1
    pattern_gen changed 0 2048 >"$mnt/dir/b.bin" || return 1
    printf 'appended\n' >>"$mnt/dir/c.txt" || return 1
    pattern_gen new 0 1024 >"$mnt/new.bin" || return 1
    sync
    ! (cd "$mnt" && sha256sum -c --quiet "$sums" >/dev/null 2>&1)
}
step "change, delete and add files (checksums now differ)" change_files

refuse_mounted() {
    local err
    if err=$("$S" restore before -n "$ID" 2>&1); then
        echo "restore succeeded on a mounted device: $err"
        return 1
    fi
    echo "$err"
    grep -q "mounted at $mnt" <<<"$err" && grep -q umount <<<"$err"
}
step "restore refused while mounted, naming the mount point and the fix" refuse_mounted

must "umount" umount "$mnt"
restore_it() { "$S" restore before -n "$ID"; }
must "snapblk restore before" restore_it

verify_restored() {
    mount -t ext4 "$DEV" "$mnt" || return 1
    (cd "$mnt" && sha256sum -c "$sums") || { umount "$mnt"; return 1; }
    [[ ! -e $mnt/new.bin ]] || { echo "new.bin survived the restore"; umount "$mnt"; return 1; }
    umount "$mnt"
}
step "after restore every file's sha256 matches, the new file is gone" verify_restored
step "e2fsck -fn clean after restore" e2fsck -fn "$DEV"

step "a pre-restore snapshot exists (restore is reversible)" \
    bash -c "'$S' snapshot list -n $ID --json | grep -q '\"pre-restore'"
step "diff before -> live answers (JSON with changed_blocks)" \
    bash -c "'$S' diff before -n $ID --json | grep -q changed_blocks"

export_check() {
    local img2=$VM_SCRATCH/before.img loopdev
    "$S" export before -n "$ID" --to "$img2" || return 1
    loopdev=$(/usr/sbin/losetup --find --show "$img2") || return 1
    on_exit /usr/sbin/losetup -d "$loopdev"
    mkdir -p "$exp_mnt" && mount -t ext4 -o ro "$loopdev" "$exp_mnt" || return 1
    (cd "$exp_mnt" && sha256sum -c "$sums")
    local rc=$?
    umount "$exp_mnt"
    return $rc
}
step "export before as an image; it mounts read-only and every sha256 matches" export_check
step "export to an existing file is refused" \
    bash -c "! '$S' export before -n $ID --to '$VM_SCRATCH/before.img' 2>'$VM_SCRATCH/exp.err' && grep -q 'already exists' '$VM_SCRATCH/exp.err'"

delete_dev() {
    "$S" delete -n "$ID" || return 1
    [[ ! -e $DEV ]] || { echo "$DEV still exists"; return 1; }
    [[ ! -e /run/snapblk/$ID ]] || { echo "run dir left behind"; return 1; }
    T_CLEANUP=()
}
must "snapblk delete removes the device and its run state" delete_dev
step "data stays on disk: offline snapshot list still shows before" \
    bash -c "'$S' snapshot list --backing '$img' --store '$store' | grep -q ' before '"
step "offline check of the store" "$S" check --backing "$img" --store "$store"
finish
