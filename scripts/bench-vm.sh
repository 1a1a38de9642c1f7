#!/usr/bin/env bash
# VM fio bench: one VM boot (tests/vm/run.sh) running tests/vm/bench/fio-compare.sh, which
# runs bench/fio/*.fio against the kernel loop device (direct I/O), libublk 0.4.8's loop
# example, dm-snapshot and snapblk (plain, first writes after a snapshot, rewrite), then
# `snapblk-bench vm-report` turns the fio JSON into bench/results/vm-<UTC>.json, a table,
# an SVG plot and the VM section of bench/README.md.
#
#   scripts/bench-vm.sh            full run (~15 min): 3 repetitions, results in bench/results
#   scripts/bench-vm.sh --quick    a few minutes, tiny sizes, 1 repetition (CI smoke);
#                                  results in target/vm-out/bench_fio-compare/report
#   options: --reps N  --targets "loop-dio libublk-loop-async libublk-loop snapblk snapblk-cow dm-snap"
#            --no-build (use the snapblk already in target/release, or SNAPBLK_BIN)
#            --snapblk-args "--workers,4" (extra `snapblk create` arguments, comma-separated)
#            --perf (diagnosis: perf record/stat around the ublk targets' runs, reports in
#                    target/vm-out/bench_fio-compare/perf/; figures are perturbed, so the
#                    results go there too, never to bench/results)
#
# Env: SNAPBLK_BIN (snapblk binary to test), VM_MEM / VM_TMP_SIZE / VM_TIMEOUT (defaults
# sized for the mode), CARGO (cargo command).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
CARGO=${CARGO:-cargo}

quick=0 reps='' targets='' build=1 perf=0 snapblk_args=
while (($#)); do
    case $1 in
        --quick) quick=1 ;;
        --reps)
            reps=${2:?--reps needs a number}
            shift
            ;;
        --targets)
            targets=${2:?--targets needs a list}
            shift
            ;;
        --no-build) build=0 ;;
        --perf) perf=1 ;;
        --snapblk-args)
            snapblk_args=${2:?--snapblk-args needs a comma-separated list}
            shift
            ;;
        -h | --help)
            sed -n '2,15s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *)
            echo "bench-vm: unknown argument '$1' (see --help)" >&2
            exit 2
            ;;
    esac
    shift
done
[[ -z $reps || $reps =~ ^[1-9][0-9]*$ ]] || { echo "bench-vm: --reps $reps is not a positive number" >&2; exit 2; }

log() { printf 'bench-vm: %s\n' "$*" >&2; }
die() { printf 'bench-vm: error: %s\n' "$*" >&2; exit 1; }

# ---- libublk 0.4.8's loop example, built from the published crate, cached -----------
LIBUBLK_VERSION=0.4.8
UBLK_DIR=$REPO_ROOT/target/libublk-loop
UBLK_BIN=$UBLK_DIR/bin/libublk-loop

build_libublk_loop() {
    if [[ -x $UBLK_BIN && -f $UBLK_DIR/bin/version && $(cat "$UBLK_DIR/bin/version") == "$LIBUBLK_VERSION" ]]; then
        log "libublk loop example: cached $UBLK_BIN"
        return 0
    fi
    local registry src
    registry=${CARGO_HOME:-$HOME/.cargo}/registry/src
    src=$(find "$registry" -maxdepth 2 -type d -name "libublk-$LIBUBLK_VERSION" -print -quit 2>/dev/null || true)
    if [[ -z $src ]]; then
        # The workspace pins libublk =0.4.8, so fetching the workspace's dependencies puts
        # the crate source in the registry cache.
        log "libublk-$LIBUBLK_VERSION source not in $registry: cargo fetch"
        "$CARGO" fetch --locked >/dev/null 2>&1 || "$CARGO" fetch
        src=$(find "$registry" -maxdepth 2 -type d -name "libublk-$LIBUBLK_VERSION" -print -quit 2>/dev/null || true)
        [[ -n $src ]] || die "libublk-$LIBUBLK_VERSION source not found under $registry after cargo fetch"
    fi
    log "building libublk $LIBUBLK_VERSION's loop example from $src"
    rm -rf "$UBLK_DIR/src"
    mkdir -p "$UBLK_DIR/bin"
    cp -r "$src" "$UBLK_DIR/src"
    # A workspace of its own: otherwise cargo takes it for a stray member of ours.
    printf '\n[workspace]\n' >>"$UBLK_DIR/src/Cargo.toml"
    # Its example dev-dependencies may not be in the registry cache: offline first, then
    # let cargo fetch them from the configured registry.
    if ! (cd "$UBLK_DIR/src" && "$CARGO" build --release --example loop --offline --target-dir ../build) 2>"$UBLK_DIR/build-offline.log"; then
        log "offline build failed (missing dev-dependencies?), retrying with the registry"
        (cd "$UBLK_DIR/src" && "$CARGO" build --release --example loop --target-dir ../build) \
            || die "building libublk's loop example failed (needs libclang-dev: scripts/deps.sh)"
    fi
    cp "$UBLK_DIR/build/release/examples/loop" "$UBLK_BIN"
    echo "$LIBUBLK_VERSION" >"$UBLK_DIR/bin/version"
}

# ---- snapblk --------------------------------------------------------------------------
if ((build)) && [[ -z ${SNAPBLK_BIN:-} ]]; then
    log "building snapblk (release)"
    "$CARGO" build --release -p snapblk
fi
snapblk=${SNAPBLK_BIN:-$REPO_ROOT/target/release/snapblk}
[[ -x $snapblk ]] || die "no snapblk binary at $snapblk: build it (cargo build --release -p snapblk) or set SNAPBLK_BIN"
export SNAPBLK_BIN=$snapblk
build_libublk_loop
log "building snapblk-bench (release)"
"$CARGO" build --release -p snapblk-bench

# ---- the VM ---------------------------------------------------------------------------
# Sizes: the guest's tmpfs holds the origin (DEV) plus one COW store (RW + SEQ + metadata)
# at a time; the 4 GiB VM leaves ~1 GiB for the kernel, initramfs and daemons.
if ((quick)); then
    env_mode="BENCH_MODE=quick BENCH_REPS=${reps:-1} BENCH_DEV_MIB=256 BENCH_RW_MIB=16 BENCH_SEQ_MIB=64 BENCH_READ_SECS=2 BENCH_CAP_SECS=30"
    : "${VM_MEM:=3072}" "${VM_TMP_SIZE:=1G}" "${VM_TIMEOUT:=900}"
else
    env_mode="BENCH_MODE=full BENCH_REPS=${reps:-3} BENCH_DEV_MIB=1024 BENCH_RW_MIB=64 BENCH_SEQ_MIB=256 BENCH_READ_SECS=6 BENCH_CAP_SECS=90"
    : "${VM_MEM:=4096}" "${VM_TMP_SIZE:=2560M}" "${VM_TIMEOUT:=2400}"
fi
[[ -z $targets ]] || env_mode+=" BENCH_TARGETS=${targets// /,}"
[[ -z $snapblk_args ]] || env_mode+=" BENCH_SNAPBLK_ARGS=${snapblk_args// /,}"
extra_bins=''
if ((perf)); then
    perf_bin=$(command -v perf) || die "--perf: no perf here (apt-get install linux-perf)"
    env_mode+=" BENCH_PERF=1"
    extra_bins=$perf_bin
fi
export VM_MEM VM_TMP_SIZE VM_TIMEOUT
export VM_GUEST_ENV="${VM_GUEST_ENV:-} $env_mode LIBUBLK_LOOP=libublk-loop"
export VM_EXTRA_BINS="${VM_EXTRA_BINS:-} $extra_bins $UBLK_BIN $REPO_ROOT/bench/fio/randwrite-4k.fio $REPO_ROOT/bench/fio/randread-4k.fio $REPO_ROOT/bench/fio/seqwrite-1m.fio"
out=$REPO_ROOT/target/vm-out/bench_fio-compare
start=$SECONDS
rc=0
"$REPO_ROOT/tests/vm/run.sh" bench/fio-compare.sh || rc=$?
log "VM run took $((SECONDS - start)) s (exit $rc)"
[[ -f $out/meta.json ]] || die "the VM left no $out/meta.json (exit $rc): see target/vm-logs/bench_fio-compare.log"
((rc == 0)) || log "some bench steps failed (exit $rc): the report covers what was measured"

# ---- report -------------------------------------------------------------------------
git_rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain -- snapmap ublk-target cli 2>/dev/null | wc -l || echo 0)
source_desc=$git_rev
((dirty == 0)) || source_desc+=" + $dirty locally modified files in snapmap/, ublk-target/, cli/"
report_args=(vm-report "$out" --source "$source_desc")
# Quick, diagnostic or non-default runs never replace the published results.
if ((quick || perf)) || [[ -n $snapblk_args || -n $targets ]]; then
    report_args+=(--out "$out/report")
fi
"$REPO_ROOT/target/release/snapblk-bench" "${report_args[@]}"
exit "$rc"
