#!/usr/bin/env bash
# snapblk device under fio: crc32c-verified random and sequential writes without and with
# a snapshot (the copy-on-write path), then SIGKILL of the daemon under load, `snapblk
# recover`, no acknowledged write lost, and a fresh verified pass.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -n ${SNAPBLK_BIN:-} ]] || { skip "device-fio" "no snapblk binary"; finish; }
S=$SNAPBLK_BIN
img=$VM_SCRATCH/fio-disk.img
DEV= ID=

create_dev() { snapblk_create --backing "$img" --size 256M --depth 64; }
must "snapblk create (256M, depth 64)" create_dev
note "device $DEV (id $ID)"

# fio_verify NAME RW BS SIZE [OFFSET]  write then read back with crc32c, any mismatch fatal.
fio_verify() {
    local out=$VM_SCRATCH/fio-$1.out rc
    fio --name="$1" --filename="$DEV" --rw="$2" --bs="$3" --size="$4" --offset="${5:-0}" \
        --ioengine=io_uring --iodepth=32 --direct=1 \
        --verify=crc32c --do_verify=1 --verify_fatal=1 --randrepeat=0 --output="$out"
    rc=$?
    grep -E 'IOPS=|err=|verify|bad' "$out" | head -n 6
    return $rc
}

step "fio randwrite 4k QD32 48M crc32c verify (no snapshot)" fio_verify rw-nosnap randwrite 4k 48M
step "fio seq write 1M 64M crc32c verify (no snapshot)" fio_verify seq-nosnap write 1M 64M 64M
# The image s1 must keep, read straight from the device before it is taken.
image_sum() { dd if="$1" bs=1M iflag=direct status=none | md5sum | cut -d' ' -f1; }
S1_SUM=$(image_sum "$DEV")
note "image before s1: $S1_SUM"
must "snapshot create s1" "$S" snapshot create s1 -n "$ID"
# s1_intact LABEL: export s1 and compare it with the image it was taken from.
s1_intact() {
    local out=$VM_SCRATCH/s1-$1.img sum
    "$S" export s1 -n "$ID" --to "$out" || return 1
    sum=$(md5sum <"$out" | cut -d' ' -f1)
    rm -f "$out"
    echo "s1 exported: $sum, taken from: $S1_SUM"
    [[ $sum == "$S1_SUM" ]]
}
step "fio randwrite 4k QD32 48M crc32c verify (with snapshot: COW)" fio_verify rw-snap randwrite 4k 48M
step "fio seq write 1M 64M crc32c verify (with snapshot)" fio_verify seq-snap write 1M 64M 64M
step "snapshot s1 preserved blocks (status shows preserves)" \
    bash -c "'$S' status -n $ID --json | grep -q '\"preserves\": [1-9]'"
# More than one request in a commit group means the queue handed the engine several
# requests at once: the queue thread does not serialize on the engine.
step "concurrent COW writes shared group commits (max_group_requests > 1)" \
    bash -c "'$S' status -n $ID --json | tee /dev/stderr | grep -Eq '\"max_group_requests\": ([2-9]|[1-9][0-9]+)'"
step "first writes went through the queue-driven copy-on-write (io.direct_cow_writes > 0)" \
    bash -c "'$S' status -n $ID --json | grep -Eq '\"direct_cow_writes\": [1-9]'"
step "snapshot s1 reads back exactly as taken after the copy-on-write passes" s1_intact cow
note "$(grep -h 'IOPS=' "$VM_SCRATCH"/fio-*.out | sed 's/^ */fio: /' | tr '\n' ';')"

# Acknowledged + flushed writes that must survive the daemon's death.
step "pattern write 1024 blocks at 200 MiB (O_DIRECT + fsync)" pattern_write "$DEV" crash 51200 1024

kill_under_load() {
    local pid fio_pid rc
    pid=$(cat "/run/snapblk/$ID/pid") || return 1
    fio --name=load --filename="$DEV" --rw=randwrite --bs=4k --size=160M --ioengine=io_uring \
        --iodepth=32 --direct=1 --time_based --runtime=25 --output="$VM_SCRATCH/load.out" &
    fio_pid=$!
    sleep 4
    echo "SIGKILL daemon $pid under fio load"
    kill -KILL "$pid" || return 1
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    "$S" list
    local t0=$SECONDS
    "$S" recover -n "$ID" || { kill "$fio_pid"; return 1; }
    echo "recover returned after $((SECONDS - t0)) s"
    [[ $(cat "/run/snapblk/$ID/pid") != "$pid" ]] || { echo "pid file not updated"; return 1; }
    wait "$fio_pid"
    rc=$?
    grep -E 'err=|iops' "$VM_SCRATCH/load.out" | head -n 5
    echo "fio under load exited $rc"
    return $rc
}
step "SIGKILL the daemon under fio load, snapblk recover; fio finishes without errors" kill_under_load
step "acknowledged pattern survived the crash" pattern_check "$DEV" crash 51200 1024
step "snapshot s1 survived the crash" bash -c "'$S' snapshot list -n $ID | grep -q ' s1 '"
step "snapshot s1 still reads back exactly as taken after the crash" s1_intact crash
step "fresh fio randwrite 4k crc32c verify after recovery" fio_verify rw-recovered randwrite 4k 48M
step "fresh fio seq write 1M crc32c verify after recovery" fio_verify seq-recovered write 1M 32M 128M
step "store check after recovery" "$S" check -n "$ID"
step "status and snapshot list after recovery" bash -c "'$S' status -n $ID && '$S' snapshot list -n $ID"

delete_dev() {
    "$S" delete -n "$ID" || return 1
    [[ ! -e $DEV ]] || { echo "$DEV still exists"; return 1; }
    T_CLEANUP=()
}
must "snapblk delete" delete_dev
step "offline check after delete" "$S" check --backing "$img"
finish
