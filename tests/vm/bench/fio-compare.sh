#!/usr/bin/env bash
# VM fio bench (run by scripts/bench-vm.sh, not by the test suite): the same fio jobs
# (bench/fio/*.fio: 4 KiB randwrite, 4 KiB randread, 1 MiB sequential write; io_uring,
# O_DIRECT, QD16) against, in one boot and over the same origin file on the guest's tmpfs:
#
#   loop-dio      kernel loop device, --direct-io=on
#   libublk-loop  libublk 0.4.8's `loop` example (the ublk baseline), in its default mode:
#                 one synchronous handler called per completion
#   libublk-loop-async  the same example with -a: one async task per tag on a smol
#                 executor, the execution model snapblk's queues use (a reference)
#   dm-snap       dm snapshot-origin + persistent snapshot, 4 KiB chunks (first writes)
#   snapblk       snapblk, no snapshot
#   snapblk-cow   snapblk right after `snapshot create` (first writes)
#   snapblk-rewrite  the same jobs again on that device: blocks already preserved
#
# The write jobs are size-bounded over disjoint regions (randwrite [0, RW), seqwrite
# [SEQ_OFF, SEQ_OFF+SEQ)), each block written once per run, so after a fresh snapshot
# every write is a first write. Each repetition builds every target anew (fresh snapshot,
# empty COW/store file); odd repetitions run the targets in the order of TARGETS below
# (compared pairs next to each other), even ones in reverse (snapblk-cow and its rewrite
# stay together).
#
# Env (from VM_GUEST_ENV): BENCH_MODE (full|quick) BENCH_REPS BENCH_DEV_MIB BENCH_RW_MIB
#   BENCH_SEQ_MIB BENCH_READ_SECS BENCH_CAP_SECS BENCH_TARGETS (comma-separated subset)
#   LIBUBLK_LOOP (path or name of the built loop example, default libublk-loop)
#   BENCH_SNAPBLK_ARGS (extra `snapblk create` arguments, comma-separated, e.g. --workers,4)
#   BENCH_PERF=1 (diagnosis, perturbs the figures: every fio run of the targets in
#   BENCH_PERF_TARGETS runs under `perf record -a` and `perf stat -a`; needs perf on PATH)
# Output in $VM_OUT: meta.json, fio/rREP-TARGET-JOB.json, status/rREP-TARGET.json,
#   cpu/rREP-TARGET-JOB.json (guest CPU time and the ublk server's, over the fio run),
#   with BENCH_PERF=1 also perf/rREP-TARGET-JOB.{report,comm,sym,snapblk,stat}.txt.
source "$(dirname "${BASH_SOURCE[0]}")/../scenarios/lib.sh"

MODE=${BENCH_MODE:-quick}
REPS=${BENCH_REPS:-1}
DEV_MIB=${BENCH_DEV_MIB:-256}
RW_MIB=${BENCH_RW_MIB:-32}
SEQ_MIB=${BENCH_SEQ_MIB:-64}
READ_SECS=${BENCH_READ_SECS:-2}
CAP_SECS=${BENCH_CAP_SECS:-60}
# Run order: each compared pair runs back to back (libublk-loop next to snapblk,
# snapblk-cow next to dm-snap), forwards and backwards, so that the emulated machine's
# drift over a repetition (run-to-run swings of a third were seen) stays out of the ratios.
TARGETS=${BENCH_TARGETS:-loop-dio,libublk-loop-async,libublk-loop,snapblk,snapblk-cow,dm-snap}
TARGETS=${TARGETS//,/ }
LOOP_BIN=$(command -v "${LIBUBLK_LOOP:-libublk-loop}" || true)
SEQ_OFF_MIB=$((DEV_MIB - SEQ_MIB))
UBLK_LOOP_ID=60
SNAPBLK_ARGS=${BENCH_SNAPBLK_ARGS:-}
SNAPBLK_ARGS=${SNAPBLK_ARGS//,/ }
PERF=${BENCH_PERF:-0}
PERF_TARGETS=" ${BENCH_PERF_TARGETS:-libublk-loop,libublk-loop-async,snapblk,snapblk-cow,snapblk-rewrite} "
PERF_TARGETS=${PERF_TARGETS//,/ }
OUT=${VM_OUT:?VM_OUT is not set: run this through tests/vm/run.sh}
mkdir -p "$OUT/fio" "$OUT/status" "$OUT/cpu"
if ((PERF)); then
    command -v perf >/dev/null || { echo "BENCH_PERF=1 but no perf on PATH"; exit 2; }
    mkdir -p "$OUT/perf"
fi

# The job files: the repository's when it is there (host mode), else the copies
# VM_EXTRA_BINS put on PATH (they are executable, with a fio shebang).
FIO_DIR=$SNAPBLK_REPO/bench/fio
[[ -f $FIO_DIR/randwrite-4k.fio ]] || FIO_DIR=$(dirname "$(command -v randwrite-4k.fio || echo /nonexistent/x)")
S=${SNAPBLK_BIN:-}
origin=$VM_SCRATCH/bench-origin.img
ID=

((SEQ_OFF_MIB >= RW_MIB)) || { echo "BENCH_RW_MIB + BENCH_SEQ_MIB must fit in BENCH_DEV_MIB"; exit 2; }
must "fio job files present ($FIO_DIR)" test -f "$FIO_DIR/randwrite-4k.fio" -a -f "$FIO_DIR/randread-4k.fio" -a -f "$FIO_DIR/seqwrite-1m.fio"
must "snapblk binary present" test -x "$S"
must "libublk loop example present (LIBUBLK_LOOP)" test -x "$LOOP_BIN"

# ---- target set-up and tear-down (each idempotent; teardown_all runs on any exit) ----

LOOP_DEV='' COW_LOOP='' UBLK_UP=0 DM_UP=0

# ublk_loop_up [EXTRA-ARG...]  (-a: the example's async mode)
ublk_loop_up() {
    "$LOOP_BIN" add -n "$UBLK_LOOP_ID" -f "$origin" -q 1 -d 64 "$@" >"$VM_SCRATCH/libublk-loop.log" 2>&1 || return 1
    UBLK_UP=1
    wait_for "/dev/ublkb$UBLK_LOOP_ID" 20
}
ublk_loop_down() {
    ((UBLK_UP)) || return 0
    "$LOOP_BIN" del -n "$UBLK_LOOP_ID" || return 1
    UBLK_UP=0
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -e /dev/ublkb$UBLK_LOOP_ID ]] || return 0
        sleep 0.1
    done
    echo "/dev/ublkb$UBLK_LOOP_ID still exists 10 s after del"
    return 1
}

loop_up() { LOOP_DEV=$(/usr/sbin/losetup --find --show --direct-io=on "$origin"); }
loop_down() {
    [[ -n $LOOP_DEV ]] || return 0
    /usr/sbin/losetup -d "$LOOP_DEV" && LOOP_DEV=
}

# dm-snapshot: the snapshot first, then the origin target, both over loop devices with
# direct I/O on tmpfs files (the COW file is new and empty each time).
dm_up() {
    local sectors=$((DEV_MIB * 2048))
    loop_up || return 1
    rm -f "$VM_SCRATCH/bench-cow.img"
    truncate -s "${DEV_MIB}M" "$VM_SCRATCH/bench-cow.img" || return 1
    COW_LOOP=$(/usr/sbin/losetup --find --show --direct-io=on "$VM_SCRATCH/bench-cow.img") || return 1
    DM_UP=1
    dmsetup create bench-snap --noudevsync --table "0 $sectors snapshot $LOOP_DEV $COW_LOOP P 8" || return 1
    dmsetup create bench-origin --noudevsync --table "0 $sectors snapshot-origin $LOOP_DEV" || return 1
    dmsetup mknodes && wait_for /dev/mapper/bench-origin 5
}
dm_down() {
    ((DM_UP)) || return 0
    dm_remove bench-origin
    dm_remove bench-snap
    if [[ -n $COW_LOOP ]]; then /usr/sbin/losetup -d "$COW_LOOP" && COW_LOOP=; fi
    loop_down
    rm -f "$VM_SCRATCH/bench-cow.img"
    DM_UP=0
}

snapblk_up() {
    local out
    rm -f "$VM_SCRATCH/bench.snapstore"
    # shellcheck disable=SC2086  # extra arguments, split on purpose
    out=$("$S" create --backing "$origin" --store "$VM_SCRATCH/bench.snapstore" --direct-io $SNAPBLK_ARGS) || { echo "$out"; return 1; }
    DEV=$(tail -n1 <<<"$out")
    ID=${DEV#/dev/ublkb}
    [[ -b $DEV ]] || { echo "snapblk create printed '$out', $DEV is not a block device"; return 1; }
}
snapblk_down() {
    [[ -n $ID ]] || return 0
    "$S" delete -n "$ID" || return 1
    ID=
    rm -f "$VM_SCRATCH/bench.snapstore"
}

teardown_all() {
    snapblk_down
    ublk_loop_down
    dm_down
    loop_down
}
on_exit teardown_all

# ---- CPU accounting: where each target's time goes ------------------------------------
# The guest's CPU time (/proc/stat, all CPUs) and the ublk server's (every thread of the
# processes holding /dev/ublkcN open; none for the kernel's loop and dm targets), sampled
# around each fio run. Counted in clock ticks (USER_HZ), so it costs nothing during the run.

# server_pids DEVICE  pids of the processes that have DEVICE's ublk char device open.
server_pids() {
    local dev=$1 p f id
    [[ $dev == /dev/ublkb* ]] || return 0
    id=${dev#/dev/ublkb}
    for p in /proc/[0-9]*; do
        for f in "$p"/fd/*; do
            if [[ $(readlink "$f" 2>/dev/null) == "/dev/ublkc$id" ]]; then
                echo "${p#/proc/}"
                break
            fi
        done
    done
}

# cpu_sample PID...  "user nice system idle iowait irq softirq srv_utime srv_stime" in ticks.
cpu_sample() {
    local g u=0 s=0 p rest f
    g=$(awk '$1 == "cpu" { print $2, $3, $4, $5, $6, $7, $8; exit }' /proc/stat)
    for p in "$@"; do
        # Fields after the parenthesised command name: utime and stime are the 12th and 13th.
        rest=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        read -ra f <<<"$rest"
        u=$((u + f[11]))
        s=$((s + f[12]))
    done
    echo "$g $u $s"
}

# cpu_json BEFORE AFTER NPIDS  the deltas as JSON.
cpu_json() {
    local -a a b
    read -ra a <<<"$1"
    read -ra b <<<"$2"
    local names=(user nice system idle iowait irq softirq server_user server_system) i out
    out="{\"ticks_per_sec\": $(getconf CLK_TCK 2>/dev/null || echo 100), \"cpus\": $(nproc), \"server_processes\": $3"
    for i in "${!names[@]}"; do out+=", \"${names[i]}\": $((b[i] - a[i]))"; done
    echo "$out}"
}

# ---- fio ----------------------------------------------------------------------------

# run_job REP TARGET JOB DEVICE  run bench/fio/JOB.fio on DEVICE, JSON to $OUT/fio/.
run_job() {
    local pids before rc
    read -ra pids <<<"$(server_pids "$4" | tr '\n' ' ')"
    before=$(cpu_sample "${pids[@]}")
    run_fio "$@"
    rc=$?
    # Under perf the window also holds perf's own reporting: no sample then.
    if ! ((PERF)) || [[ $PERF_TARGETS != *" $2 "* ]]; then
        cpu_json "$before" "$(cpu_sample "${pids[@]}")" "${#pids[@]}" >"$OUT/cpu/r$1-$2-$3.json"
    fi
    return "$rc"
}

run_fio() {
    local rep=$1 target=$2 job=$3 dev=$4 off size runtime json
    case $job in
        randwrite-4k) off=0 size=${RW_MIB}M runtime=$CAP_SECS ;;
        randread-4k) off=0 size=${DEV_MIB}M runtime=$READ_SECS ;;
        seqwrite-1m) off=${SEQ_OFF_MIB}M size=${SEQ_MIB}M runtime=$CAP_SECS ;;
        *) echo "unknown job $job"; return 2 ;;
    esac
    json=$OUT/fio/r$rep-$target-$job.json
    local fio=(fio --output-format=json --output="$json" "$FIO_DIR/$job.fio")
    if ((PERF)) && [[ $PERF_TARGETS == *" $target "* ]]; then
        local base=$OUT/perf/r$rep-$target-$job rc
        # Software events only: the emulated CPU has no PMU. Flat profile (no call graphs:
        # release builds have no frame pointers) of every CPU while the job runs.
        FILENAME=$dev OFFSET=$off SIZE=$size RUNTIME=$runtime \
            perf stat -a -e task-clock,context-switches,cpu-migrations,page-faults -o "$base.stat.txt" \
            perf record -a -q -F 499 -o "$VM_SCRATCH/perf.data" -- "${fio[@]}"
        rc=$?
        perf report -i "$VM_SCRATCH/perf.data" --stdio --no-children --percent-limit 0.5 \
            --sort comm,dso,sym >"$base.report.txt" 2>&1
        perf report -i "$VM_SCRATCH/perf.data" --stdio --no-children --sort comm \
            >"$base.comm.txt" 2>&1
        perf report -i "$VM_SCRATCH/perf.data" --stdio --no-children --percent-limit 0.3 \
            --sort dso,sym >"$base.sym.txt" 2>&1
        # The server's queue and commit threads alone, user and kernel, as shares of their
        # own samples: the system-wide profile cut at 0.3% hides their long tail.
        perf report -i "$VM_SCRATCH/perf.data" --stdio --no-children \
            --comms snapblk,snapblk-commit --percentage relative --percent-limit 0.2 \
            --sort dso,sym >"$base.snapblk.txt" 2>&1
        rm -f "$VM_SCRATCH/perf.data"
        return "$rc"
    fi
    FILENAME=$dev OFFSET=$off SIZE=$size RUNTIME=$runtime "${fio[@]}"
}

# iops_of JSON  the first non-zero "iops" in a fio JSON file (the job's read or write side).
iops_of() {
    awk '/"iops" :/ { v = $3; gsub(",", "", v); if (v + 0 > 0) { printf "%.0f", v; exit } }' "$1"
}

run_jobs() {
    local rep=$1 target=$2 dev=$3 job
    for job in randwrite-4k randread-4k seqwrite-1m; do
        step "r$rep $target $job" run_job "$rep" "$target" "$job" "$dev" || return 1
        note "r$rep $target $job: $(iops_of "$OUT/fio/r$rep-$target-$job.json") IOPS"
    done
}

save_status() {
    "$S" status -n "$ID" --json >"$OUT/status/r$1-$2.json" 2>&1 || true
}

# run_target REP TARGET  build the target, run the three jobs, tear it down.
run_target() {
    local rep=$1 t=$2
    case $t in
        loop-dio)
            must "r$rep loop-dio: losetup --direct-io=on" loop_up
            run_jobs "$rep" loop-dio "$LOOP_DEV"
            must "r$rep loop-dio: detach" loop_down
            ;;
        libublk-loop)
            must "r$rep libublk-loop: add /dev/ublkb$UBLK_LOOP_ID" ublk_loop_up
            run_jobs "$rep" libublk-loop "/dev/ublkb$UBLK_LOOP_ID"
            must "r$rep libublk-loop: del" ublk_loop_down
            ;;
        libublk-loop-async)
            must "r$rep libublk-loop-async: add -a /dev/ublkb$UBLK_LOOP_ID" ublk_loop_up -a
            run_jobs "$rep" libublk-loop-async "/dev/ublkb$UBLK_LOOP_ID"
            must "r$rep libublk-loop-async: del" ublk_loop_down
            ;;
        dm-snap)
            must "r$rep dm-snap: snapshot + snapshot-origin (P, 4 KiB chunks)" dm_up
            run_jobs "$rep" dm-snap /dev/mapper/bench-origin
            step "r$rep dm-snap: status" dmsetup status bench-snap
            dmsetup status bench-snap >"$OUT/status/r$rep-dm-snap.txt" 2>&1
            must "r$rep dm-snap: remove" dm_down
            ;;
        snapblk)
            must "r$rep snapblk: create" snapblk_up
            run_jobs "$rep" snapblk "$DEV"
            save_status "$rep" snapblk
            must "r$rep snapblk: delete" snapblk_down
            ;;
        snapblk-cow)
            must "r$rep snapblk-cow: create" snapblk_up
            must "r$rep snapblk-cow: snapshot create" "$S" snapshot create bench -n "$ID"
            run_jobs "$rep" snapblk-cow "$DEV"
            save_status "$rep" snapblk-cow
            run_jobs "$rep" snapblk-rewrite "$DEV"
            save_status "$rep" snapblk-rewrite
            must "r$rep snapblk-cow: delete" snapblk_down
            ;;
        *)
            echo "unknown target $t"
            return 2
            ;;
    esac
}

# ---- run ----------------------------------------------------------------------------

note "mode $MODE, $REPS repetition(s), device ${DEV_MIB} MiB, randwrite ${RW_MIB} MiB, seqwrite ${SEQ_MIB} MiB at ${SEQ_OFF_MIB} MiB, randread ${READ_SECS} s"
# Every target sees the same fully written origin (no holes to read, no allocation).
must "fill the origin (${DEV_MIB} MiB)" fio --name=fill --filename="$origin" --rw=write --bs=1M \
    --size="${DEV_MIB}M" --ioengine=psync --output=/dev/null

read -ra order <<<"$TARGETS"
orders=()
for ((rep = 1; rep <= REPS; rep++)); do
    if ((rep % 2 == 1)); then
        seq_targets=("${order[@]}")
    else
        seq_targets=()
        for ((i = ${#order[@]} - 1; i >= 0; i--)); do seq_targets+=("${order[i]}"); done
    fi
    orders+=("\"${seq_targets[*]}\"")
    for t in "${seq_targets[@]}"; do run_target "$rep" "$t"; done
done

cat >"$OUT/meta.json" <<EOF
{
  "mode": "$MODE",
  "reps": $REPS,
  "dev_mib": $DEV_MIB,
  "randwrite_mib": $RW_MIB,
  "seqwrite_mib": $SEQ_MIB,
  "seqwrite_offset_mib": $SEQ_OFF_MIB,
  "randread_secs": $READ_SECS,
  "cap_secs": $CAP_SECS,
  "kernel": "$(uname -r)",
  "cpus": $(nproc),
  "mem_kib": $(awk '/MemTotal/ {print $2}' /proc/meminfo),
  "guest": ${SNAPBLK_VM_GUEST:-0},
  "snapblk_version": "$("$S" --version 2>/dev/null | tr -d '"')",
  "snapblk_args": "$SNAPBLK_ARGS",
  "perf": $PERF,
  "orders": [$(IFS=,; echo "${orders[*]}")]
}
EOF
finish
