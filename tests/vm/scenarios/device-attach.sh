#!/usr/bin/env bash
# Snapshots attached as read-only devices of their own (issue 25, the read-only part): the
# kernel sees a read-only disk and writes fail; the device's bytes equal `export` of the
# snapshot before, while fio writes to the origin, and after a restore of the origin to
# another snapshot; a frozen ext4 snapshot mounts and its files match; the refusal rules
# (delete of an attached snapshot, --as in use, unknown snapshot, detach of a volume,
# delete of the volume while an attachment is mounted) each give one clear line.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -n ${SNAPBLK_BIN:-} ]] || { skip "device-attach" "no snapblk binary"; finish; }
S=$SNAPBLK_BIN
img=$VM_SCRATCH/attach.img
mnt=$VM_SCRATCH/attach-mnt
amnt=$VM_SCRATCH/attach-snap
sums=$VM_SCRATCH/attach-sums
ERR=$VM_SCRATCH/attach.err
DEV= ID= ATT= AID=

must "create a 128M device, 2 queues" snapblk_create --backing "$img" --size 128M --queues 2
must "mkfs.ext4 and mount" bash -c "mkfs.ext4 -q -F '$DEV' && mkdir -p '$mnt' && mount '$DEV' '$mnt'"
on_exit umount_if_mounted "$mnt"
write_files() {
    pattern_gen one 0 1024 >"$mnt/one.bin" && head -c 2000000 /dev/urandom >"$mnt/r.bin" && sync || return 1
    (cd "$mnt" && sha256sum one.bin r.bin) >"$sums"
}
must "write files, record sha256" write_files
snap() {
    fsfreeze -f "$mnt" || return 1
    "$S" snapshot create "$1" -n "$ID"
    local rc=$?
    fsfreeze -u "$mnt"
    return $rc
}
must "freeze, snapshot create s1, thaw" snap s1
export_sha() {
    "$S" export "$1" -n "$ID" --to "$VM_SCRATCH/exp.img" >/dev/null || return 1
    sha256sum <"$VM_SCRATCH/exp.img" | cut -d' ' -f1
    rm -f "$VM_SCRATCH/exp.img"
}
SHA1=$(export_sha s1)
note "export s1: $SHA1"

attach() {
    local out
    out=$("$S" snapshot attach s1 -n "$ID") || return 1
    echo "attach printed: $out"
    ATT=$out AID=${out#/dev/ublkb}
    [[ -b $ATT ]] || { echo "$ATT is not a block device"; return 1; }
    on_exit "$S" snapshot detach -n "$AID"
}
must "snapshot attach s1 -n $ID prints a new device" attach
step "the kernel sees it read-only" expect_eq "getro" "$(blockdev --getro "$ATT")" 1
step "the attached device is as large as the volume" expect_eq "size" "$(blockdev --getsize64 "$ATT")" "$(blockdev --getsize64 "$DEV")"
dev_sha() { sha256sum <"$ATT" | cut -d' ' -f1; }
step "sha256 of the attached device equals export s1" expect_eq "sha" "$(dev_sha)" "$SHA1"
step "a write to the attached device fails" \
    bash -c "! dd if=/dev/zero of='$ATT' bs=4096 count=1 oflag=direct status=none 2>'$ERR'; cat '$ERR'; [[ -s '$ERR' ]]"

during_fio() {
    fio --name=v --directory="$mnt" --rw=randwrite --bs=4k --size=16M --ioengine=psync \
        --verify=crc32c --verify_fatal=1 --randseed=3 --output="$VM_SCRATCH/attach-fio.out" &
    local fio=$! sha
    sha=$(dev_sha)
    wait $fio || { cat "$VM_SCRATCH/attach-fio.out"; return 1; }
    expect_eq "sha while fio wrote to the origin" "$sha" "$SHA1"
}
step "while fio (verify) writes to the origin, the attached device still equals export s1" during_fio
must "mount the attached snapshot read-only" bash -c "mkdir -p '$amnt' && mount -o ro '$ATT' '$amnt'"
on_exit umount_if_mounted "$amnt"
step "its files have the checksums recorded before the snapshot" bash -c "cd '$amnt' && sha256sum -c '$sums'"

# ---- refusals, each one clear line --------------------------------------------------
step "deleting the attached snapshot is refused, naming the device" \
    fails_with "attached as $ATT" "$S" snapshot delete s1 -n "$ID"
step "attaching with --as an id in use is refused" \
    fails_with "in use" "$S" snapshot attach s1 -n "$ID" --as "$ID"
step "attaching an unknown snapshot lists the names" \
    fails_with "snapshots: s1" "$S" snapshot attach nope -n "$ID"
step "detach of a volume is refused" \
    fails_with "not an attached snapshot" "$S" snapshot detach -n "$ID"
step "deleting the volume while the attachment is mounted is refused, naming the mount" \
    fails_with "$amnt" "$S" delete -n "$ID"

step "list shows the attachment" bash -c "'$S' list | grep -q 'snapshot s1 of device $ID'"
step "status -n $ID --json lists it" bash -c "'$S' status -n $ID --json | grep -q '\"snapshot\": \"s1\"'"
step "status -n $AID --json names its volume" bash -c "'$S' status -n $AID --json | grep -q '\"volume\": $ID'"

restore_other() {
    umount "$mnt" || return 1
    "$S" snapshot create s2 -n "$ID" && "$S" restore s1 -n "$ID" && "$S" restore s2 -n "$ID" || return 1
    expect_eq "sha after two restores of the origin" "$(dev_sha)" "$SHA1"
}
step "restores of the origin leave the attached device unchanged" restore_other
step "a second attachment of the same snapshot" bash -c "
    out=\$('$S' snapshot attach s1 -n $ID --as 9) && [[ \$out == /dev/ublkb9 ]] &&
    [[ \$(sha256sum </dev/ublkb9 | cut -d' ' -f1) == $SHA1 ]] && '$S' snapshot detach -n 9"

must "umount the attachment" umount "$amnt"
step "detach removes the device" bash -c "'$S' snapshot detach -n $AID && ! [[ -e $ATT ]]"
step "the snapshot can be deleted once detached" "$S" snapshot delete s1 -n "$ID"

finish
