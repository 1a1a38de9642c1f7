#!/usr/bin/env bash
# snapblk lifecycle and bad input: clear one-line errors for missing backing, wrong store,
# duplicate snapshot, unknown snapshot, bad names, a device held open by another process;
# SIGTERM shuts down cleanly; snapshots and data persist across daemon restarts.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -n ${SNAPBLK_BIN:-} ]] || { skip "device-lifecycle" "no snapblk binary"; finish; }
S=$SNAPBLK_BIN
img=$VM_SCRATCH/life.img
store=$VM_SCRATCH/life.store
ID=5
DEV=/dev/ublkb$ID
ERR=$VM_SCRATCH/life.err

step "create with a missing backing file and no --size names the fix" \
    fails_with "--size" "$S" create --backing "$VM_SCRATCH/missing.img"
step "create with --block-size 3K is refused" \
    bash -c "! '$S' create --backing '$img' --size 64M --block-size 3K"

start_dev() {
    "$S" create --backing "$img" --store "$store" --size 64M --block-size 16K -n $ID || return 1
    [[ -b $DEV ]] || return 1
}
must "create -n $ID, 64M, --block-size 16K, explicit --store" start_dev
on_exit "$S" delete -n $ID
step "physical block size is 16K" bash -c "[[ \$(cat /sys/block/ublkb$ID/queue/physical_block_size) == 16384 ]]"
step "pattern write 64 blocks at block 100" pattern_write "$DEV" life 100 64
must "snapshot create s1" "$S" snapshot create s1 -n $ID
step "pattern overwrite after s1" pattern_write "$DEV" life2 100 64
step "duplicate snapshot name refused" fails_with "already exists" "$S" snapshot create s1 -n $ID
step "invalid snapshot name refused" fails_with "invalid snapshot name" "$S" snapshot create "a b" -n $ID
step "restore of an unknown snapshot refused" fails_with "does not exist" "$S" restore nope -n $ID
step "diff s1 -> live shows the 64 changed 4K blocks as 16 blocks of 16K" \
    bash -c "'$S' diff s1 -n $ID --json | grep -q '\"changed_blocks\": 16'"

held_open() {
    local rc
    exec 7<"$DEV"
    fails_with "is open by pid" "$S" restore s1 -n $ID
    rc=$?
    exec 7<&-
    return $rc
}
step "restore refused while another process holds the device open" held_open
other_backing() {
    truncate -s 64M "$VM_SCRATCH/other.img" &&
        fails_with "already served by device $ID" "$S" create --backing "$img" --store "$VM_SCRATCH/x.store" -n 9
}
step "a second device over the same backing file is refused" other_backing
step "status --json is valid JSON with the engine's snapshots" \
    bash -c "'$S' status -n $ID --json | grep -q '\"name\": \"s1\"'"

# Every thread of the daemon keeps only CAP_SYS_ADMIN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
# and CAP_IPC_LOCK (bits 21, 1, 2, 14 = 0x204006), in every set, with no_new_privs.
capabilities() {
    local pid task st bad=0
    pid=$(cat /run/snapblk/$ID/pid) || return 1
    for task in /proc/$pid/task/*; do
        st=$(cat "$task/status") || return 1
        for set in CapEff CapPrm CapBnd; do
            grep -q "^$set:[[:space:]]*0000000000204006$" <<<"$st" ||
                { echo "$task: $(grep "^$set:" <<<"$st")"; bad=1; }
        done
        for set in CapInh CapAmb; do
            grep -q "^$set:[[:space:]]*0000000000000000$" <<<"$st" ||
                { echo "$task: $(grep "^$set:" <<<"$st")"; bad=1; }
        done
        grep -q "^NoNewPrivs:[[:space:]]*1$" <<<"$st" || { echo "$task: no_new_privs not set"; bad=1; }
    done
    echo "checked $(ls /proc/$pid/task | wc -l) threads"
    return $bad
}
step "the daemon dropped every capability it does not need, in every thread" capabilities
# Hard links are paths the CLI cannot match to the running device (not even canonicalized);
# the lock the daemon holds on the files still refuses them, naming the daemon.
locked_store() {
    ln -f "$img" "$VM_SCRATCH/alias.img" && ln -f "$store" "$VM_SCRATCH/alias.store" &&
        fails_with "is in use by pid" "$S" snapshot create sneaky \
            --backing "$VM_SCRATCH/alias.img" --store "$VM_SCRATCH/alias.store"
}
step "an offline command on the files of a running device is refused by the store lock" locked_store

sigterm() {
    local pid
    pid=$(cat /run/snapblk/$ID/pid) || return 1
    kill -TERM "$pid" || return 1
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    ! kill -0 "$pid" 2>/dev/null || { echo "daemon $pid still alive 10 s after SIGTERM"; return 1; }
    [[ ! -e $DEV ]] || { echo "$DEV still exists"; return 1; }
    [[ ! -e /run/snapblk/$ID ]] || { echo "run dir left behind"; return 1; }
    grep -q "device deleted" /run/snapblk/$ID.log
}
step "SIGTERM: daemon drains, closes the engine, removes the device and its state" sigterm
step "wrong store for a backing file is refused by name" \
    fails_with "belongs to" "$S" snapshot list --backing "$VM_SCRATCH/other.img" --store "$store"
step "offline status works on the files" bash -c "'$S' status --backing '$img' --store '$store' | grep -q 'snapshots   1'"
step "create again over the same files" start_dev
step "data written before the restart is intact" pattern_check "$DEV" life2 100 64
step "snapshot s1 persisted across daemon restarts" bash -c "'$S' snapshot list -n $ID | grep -q ' s1 '"
must "umount-free restore to s1" "$S" restore s1 -n $ID
step "restored pattern is s1's" pattern_check "$DEV" life 100 64
delete_dev() { "$S" delete -n $ID && T_CLEANUP=(); }
step "delete" delete_dev
step "deleting again names the missing device" fails_with "no snapblk device $ID" "$S" delete -n $ID
step "recover of an unknown device names it" fails_with "no snapblk device 7" "$S" recover -n 7

foreground() {
    local pid
    "$S" create --backing "$img" --store "$store" -n 6 --foreground >"$VM_SCRATCH/fg.out" 2>&1 &
    pid=$!
    wait_for /dev/ublkb6 20 || { kill "$pid"; cat "$VM_SCRATCH/fg.out"; return 1; }
    grep -q /dev/ublkb6 "$VM_SCRATCH/fg.out" || { sleep 1; grep -q /dev/ublkb6 "$VM_SCRATCH/fg.out"; } || return 1
    fails_with "still running" "$S" recover -n 6 || { kill "$pid"; return 1; }
    "$S" delete -n 6 || return 1
    wait "$pid"
}
step "create --foreground serves in the caller; recover refuses a live daemon; delete stops it" foreground

dead_delete() {
    local pid
    "$S" create --backing "$img" --store "$store" -n 8 || return 1
    pid=$(cat /run/snapblk/8/pid)
    kill -KILL "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    "$S" list
    "$S" list | grep -q "daemon dead" || return 1
    "$S" delete -n 8 || return 1
    [[ ! -e /dev/ublkb8 && ! -e /sys/class/ublk-char/ublkc8 && ! -e /run/snapblk/8 ]]
}
step "delete after the daemon was SIGKILLed removes the orphaned device" dead_delete
step "the store is still consistent after that crash" "$S" check --backing "$img" --store "$store"

store_full() {
    local d=/dev/ublkb10
    "$S" create --backing "$VM_SCRATCH/full.img" --size 64M --max-store 8M -n 10 || return 1
    dd if=/dev/urandom of=$d bs=1M count=16 oflag=direct conv=fsync status=none || return 1
    "$S" snapshot create s -n 10 || return 1
    if dd if=/dev/urandom of=$d bs=1M count=16 oflag=direct conv=fsync status=none 2>"$ERR"; then
        echo "16 MiB of changes fit in an 8 MiB store?"
        "$S" delete -n 10
        return 1
    fi
    cat "$ERR"
    grep -q "No space left" "$ERR" || { "$S" delete -n 10; return 1; }
    # (Not `| tee | grep -q`: grep -q exits at the first match, tee dies of SIGPIPE, and
    # pipefail turns a found match into a failure.)
    "$S" status -n 10 >"$VM_SCRATCH/full.status" || { "$S" delete -n 10; return 1; }
    cat "$VM_SCRATCH/full.status"
    grep -q "STORE FULL" "$VM_SCRATCH/full.status" || { "$S" delete -n 10; return 1; }
    "$S" check -n 10 || { "$S" delete -n 10; return 1; }
    "$S" delete -n 10
}
step "a full store fails writes with ENOSPC, says so in status, and stays consistent" store_full
finish
