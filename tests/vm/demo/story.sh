#!/usr/bin/env bash
# The snapblk story, narrated, on a real ublk device: create a device, put ext4 on it, write
# files, take a snapshot, break things, roll back, prove every file is back, then ship the
# device off-site and rebuild it from there. Run by scripts/demo.sh (in the project's VM when
# the host has no ublk).
source "$(dirname "${BASH_SOURCE[0]}")/../scenarios/lib.sh"

S=${SNAPBLK_BIN:?the demo needs the snapblk binary (cargo build --release -p snapblk)}
img=$VM_SCRATCH/demo.img
mnt=$VM_SCRATCH/demo-mnt
sums=$VM_SCRATCH/demo.sha256
DEV= ID=

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

say "1. Create a 256 MiB snapblk device over $img"
create_dev() {
    local out
    out=$(show "$S" create --backing "$img" --size 256M) || { echo "$out"; return 1; }
    echo "$out"
    DEV=$(tail -n1 <<<"$out")
    ID=${DEV#/dev/ublkb}
    [[ -b $DEV ]] && on_exit "$S" delete -n "$ID"
}
must "snapblk create returns with a block device" create_dev

say "2. Put ext4 on it and mount it"
must "mkfs.ext4 $DEV" mkfs.ext4 -q -F "$DEV"
must "mount $DEV $mnt" mount_at "$DEV" "$mnt"

say "3. Write some files and record their checksums"
write_files() {
    mkdir -p "$mnt/docs" "$mnt/data"
    for i in 1 2 3 4 5; do
        head -c $((i * 300 * 1024)) /dev/urandom >"$mnt/data/blob$i.bin"
        echo "important document $i, version 1" >"$mnt/docs/doc$i.txt"
    done
    sync
    (cd "$mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$sums"
    echo "$(wc -l <"$sums") files, $(du -sh "$mnt" | cut -f1)"
}
must "write files" write_files

say "4. Take a snapshot: before-upgrade"
must "snapshot create" show "$S" snapshot create before-upgrade -n "$ID"
show "$S" snapshot list -n "$ID"

say "5. Break things: edit, delete, add"
break_things() {
    echo "edited by a bad upgrade" >>"$mnt/docs/doc1.txt"
    rm -f "$mnt/data/blob3.bin" "$mnt/docs/doc2.txt"
    head -c $((2 * 1024 * 1024)) /dev/urandom >"$mnt/data/junk.bin"
    sync
}
must "change files" break_things
step "the files no longer match" bash -c "! (cd '$mnt' && sha256sum --quiet -c '$sums' >/dev/null 2>&1)"

say "6. Roll back: unmount, restore before-upgrade"
step "restore is refused while mounted" bash -c "! '$S' restore before-upgrade -n $ID"
must "umount" umount "$mnt"
must "snapblk restore before-upgrade" show "$S" restore before-upgrade -n "$ID"

say "7. Mount again and verify every checksum"
must "mount" mount_at "$DEV" "$mnt"
step "every file is back, byte for byte" bash -c "cd '$mnt' && sha256sum -c '$sums'"
step "the file added after the snapshot is gone" test ! -e "$mnt/data/junk.bin"
show "$S" snapshot list -n "$ID"
show "$S" status -n "$ID"
must "umount" umount "$mnt"
step "e2fsck -fn is clean" e2fsck -fn "$DEV"

say "8. Ship to file:///tmp/remote"
remote=$VM_SCRATCH/remote
URL=file://$remote
must "snapshot create shipped-1" show "$S" snapshot create shipped-1 -n "$ID"
must "ship one point and wait for its commit" show "$S" ship -n "$ID" --to "$URL" --once
show "$S" remote list --from "$URL"

say "9. Change, ship again"
change_again() {
    mount_at "$DEV" "$mnt" || return 1
    echo "important document 1, version 2" >"$mnt/docs/doc1.txt"
    head -c $((1024 * 1024)) /dev/urandom >"$mnt/data/new.bin"
    sync
    umount "$mnt"
}
must "edit a document, add a file" change_again
must "snapshot create shipped-2" show "$S" snapshot create shipped-2 -n "$ID"
must "ship again: only the changed blocks travel" show "$S" ship -n "$ID" --to "$URL" --once
show "$S" remote list --from "$URL"

say "10. Rebuild from the remote and compare"
rebuild_and_compare() {
    local seqs first last
    seqs=$("$S" remote list --from "$URL" --json | grep -o '"seq": *[0-9]*' | grep -o '[0-9]*$')
    first=$(head -n1 <<<"$seqs")
    last=$(tail -n1 <<<"$seqs")
    show "$S" export shipped-1 -n "$ID" --to "$VM_SCRATCH/shipped-1.img" &&
        show "$S" export shipped-2 -n "$ID" --to "$VM_SCRATCH/shipped-2.img" &&
        show "$S" remote restore --from "$URL" --point "$first" --to "$VM_SCRATCH/rebuilt-1.img" &&
        show "$S" remote restore --from "$URL" --point latest --to "$VM_SCRATCH/rebuilt-2.img" || return 1
    (cd "$VM_SCRATCH" && show sha256sum shipped-1.img rebuilt-1.img shipped-2.img rebuilt-2.img)
    cmp "$VM_SCRATCH/shipped-1.img" "$VM_SCRATCH/rebuilt-1.img" &&
        cmp "$VM_SCRATCH/shipped-2.img" "$VM_SCRATCH/rebuilt-2.img"
}
step "each rebuilt image equals the exported snapshot, byte for byte" rebuild_and_compare
step "remote verify: every point restorable" show "$S" remote verify --from "$URL"
rebuilt_mounts() {
    mkdir -p "$VM_SCRATCH/rebuilt-mnt" &&
        mount -o ro,loop "$VM_SCRATCH/rebuilt-2.img" "$VM_SCRATCH/rebuilt-mnt" || return 1
    grep -q "version 2" "$VM_SCRATCH/rebuilt-mnt/docs/doc1.txt"
    local rc=$?
    umount "$VM_SCRATCH/rebuilt-mnt"
    return $rc
}
step "the rebuilt image mounts and holds the new document" rebuilt_mounts

finish
