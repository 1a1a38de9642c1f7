#!/usr/bin/env bash
# Shipping end to end on a real ublk device with ext4, to a file:// target: snapshot + ship
# --once, rebuild the image from the remote and compare it with `export` of the same
# snapshot; change files, ship an increment, rebuild both points; continuous shipping with
# --interval shows lag in status, pause/resume/stop; remote verify; SIGKILL the daemon,
# recover, ship again on the same chain; a continuous schedule survives SIGKILL + recover
# (running ones keep shipping, paused ones stay paused).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -n ${SNAPBLK_BIN:-} ]] || { skip "ship-file" "no snapblk binary"; finish; }
snapblk_has ship || { skip "ship-file" "snapblk has no ship verb"; finish; }
S=$SNAPBLK_BIN
img=$VM_SCRATCH/ship-disk.img
mnt=$VM_SCRATCH/ship-mnt
remote=$VM_SCRATCH/remote
URL=file://$remote
DEV= ID=

create_dev() { snapblk_create --backing "$img" --size 128M; }
must "create a 128M device" create_dev
note "device $DEV (id $ID), remote $URL"
must "mkfs.ext4" mkfs.ext4 -q -F "$DEV"

write_files() {
    mount_at "$DEV" "$mnt" -t ext4 || return 1
    mkdir -p "$mnt/d" && pattern_gen "$1" 0 1024 >"$mnt/d/a.bin" &&
        head -c 2000000 /dev/urandom >"$mnt/r-$1.bin" && echo "version $1" >"$mnt/v.txt" || return 1
    sync && umount "$mnt"
}

# ship_once LABEL: ship one point, remember its seq in SEQ_<LABEL>.
ship_once() {
    local out seq
    out=$("$S" ship -n "$ID" --to "$URL" --once --json) || { echo "$out"; return 1; }
    echo "$out"
    seq=$(grep -o '"seq": *[0-9]*' <<<"$out" | grep -o '[0-9]*$')
    grep -q '"committed": *true' <<<"$out" || { echo "not committed"; return 1; }
    printf -v "SEQ_$1" '%s' "$seq"
}

# same_image POINT EXPORTED: restore POINT to a new file and compare it with EXPORTED.
same_image() {
    local out=$VM_SCRATCH/restored-$1-$RANDOM.img a b
    "$S" remote restore --from "$URL" --point "$1" --to "$out" || return 1
    a=$(sha256sum <"$out" | cut -d' ' -f1)
    b=$(sha256sum <"$2" | cut -d' ' -f1)
    echo "point $1: $a, $(basename "$2"): $b"
    cmp "$out" "$2" && rm -f "$out"
}

must "write files, umount" write_files one
must "snapshot create at1" "$S" snapshot create at1 -n "$ID"
must "ship --once to $URL commits point 1" ship_once 1
step "ship state file sits next to the store" bash -c "ls '$img'.snapstore.ship-*.json"
must "export at1" "$S" export at1 -n "$ID" --to "$VM_SCRATCH/at1.img"
step "remote restore --point latest equals export at1 (sha256, cmp)" same_image latest "$VM_SCRATCH/at1.img"
step "restore refuses to overwrite an existing file" \
    bash -c "! '$S' remote restore --from '$URL' --to '$VM_SCRATCH/at1.img' 2>'$VM_SCRATCH/ow.err'; cat '$VM_SCRATCH/ow.err'; grep -q 'already exists' '$VM_SCRATCH/ow.err'"

must "change files, umount" write_files two
must "snapshot create at2" "$S" snapshot create at2 -n "$ID"
must "ship --once again commits an incremental point" ship_once 2
step "second point is an increment" bash -c "'$S' remote list --from '$URL' | tee /dev/stderr | grep -Eq '^$SEQ_2 +incr'"
must "export at2" "$S" export at2 -n "$ID" --to "$VM_SCRATCH/at2.img"
step "restore point $SEQ_1 equals export at1" same_image "$SEQ_1" "$VM_SCRATCH/at1.img"
step "restore point $SEQ_2 equals export at2" same_image "$SEQ_2" "$VM_SCRATCH/at2.img"

continuous() {
    "$S" ship -n "$ID" --to "$URL" --interval 2s || return 1
    mount_at "$DEV" "$mnt" -t ext4 || return 1
    local i
    for i in 1 2 3; do
        head -c 500000 /dev/urandom >"$mnt/live-$i.bin" && sync
        sleep 2
    done
    umount "$mnt"
    sleep 3
    "$S" status -n "$ID" | tee "$VM_SCRATCH/ship-status.txt"
    grep -Eq "^ship +$URL running.*lag [0-9]+s, [1-9][0-9]* committed" "$VM_SCRATCH/ship-status.txt"
}
step "continuous --interval 2s: status shows running, lag and committed points" continuous
step "--pause shows paused" bash -c "'$S' ship -n $ID --to '$URL' --pause && '$S' status -n $ID | grep -E '^ship .* paused'"
step "--resume shows running" bash -c "'$S' ship -n $ID --to '$URL' --resume && '$S' status -n $ID | grep -E '^ship .* running'"
step "--stop removes the schedule" bash -c "'$S' ship -n $ID --to '$URL' --stop && ! '$S' status -n $ID | grep -E '^ship +[a-z0-9]+://'"
step "--once while stopped works (nothing running)" ship_once 3
step "remote verify: every point restorable" "$S" remote verify --from "$URL"

kill_recover_ship() {
    snapblk_kill_daemon || return 1
    "$S" recover -n "$ID" || return 1
    write_files three || return 1
    "$S" snapshot create at4 -n "$ID" || return 1
    ship_once 4 || return 1
    ((SEQ_4 > SEQ_3)) || { echo "seq $SEQ_4 after $SEQ_3"; return 1; }
    "$S" export at4 -n "$ID" --to "$VM_SCRATCH/at4.img" || return 1
    same_image latest "$VM_SCRATCH/at4.img"
}
step "SIGKILL daemon, recover, change, ship again: latest equals export at4" kill_recover_ship
step "remote verify after the crash" "$S" remote verify --from "$URL"

URL2=file://$VM_SCRATCH/remote2
points() { "$S" remote list --from "$URL2" | grep -cE '^ *[0-9]+ '; }
# kill_recover: SIGKILL the device's daemon and `recover` it.
kill_recover() { snapblk_kill_daemon && "$S" recover -n "$ID"; }
schedule_survives() {
    local before after
    "$S" ship -n "$ID" --to "$URL2" --interval 1s || return 1
    sleep 3
    before=$(points) || return 1
    echo "points before the crash: $before"
    ((before >= 1)) || return 1
    kill_recover || return 1
    "$S" status -n "$ID" | tee "$VM_SCRATCH/ship-status2.txt"
    grep -Eq "^ship +$URL2 running" "$VM_SCRATCH/ship-status2.txt" || { echo "schedule not resumed"; return 1; }
    write_files five || return 1
    for _ in $(seq 20); do
        after=$(points)
        ((after > before)) && break
        sleep 1
    done
    echo "points after the crash: $after"
    ((after > before)) || { echo "no new point after recovery"; return 1; }
    "$S" ship -n "$ID" --to "$URL2" --pause || return 1
    kill_recover || return 1
    "$S" status -n "$ID" | grep -Eq "^ship +$URL2 paused" || { echo "paused schedule not resumed as paused"; return 1; }
    "$S" ship -n "$ID" --to "$URL2" --stop || return 1
    kill_recover || return 1
    ! "$S" status -n "$ID" | grep -E '^ship +[a-z0-9]+://'
}
step "a continuous schedule survives SIGKILL + recover (running keeps shipping, paused stays paused, stopped stays gone)" schedule_survives
step "remote verify of the resumed schedule's points" "$S" remote verify --from "$URL2"

tamper() {
    local seg
    seg=$(find "$remote/segments" -type f | head -n1)
    [[ -n $seg ]] || { echo "no segment under $remote/segments"; return 1; }
    printf '\xff\xff\xff\xff' | dd of="$seg" bs=1 seek=$(($(stat -c %s "$seg") / 2)) conv=notrunc status=none
    ! "$S" remote verify --from "$URL"
}
step "tampered segment: remote verify exits non-zero" tamper

finish
