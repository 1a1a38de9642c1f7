#!/usr/bin/env bash
# Coverage-guided fuzzing of snapblk's decoders and store recovery with libFuzzer (cargo-fuzz).
#
#   scripts/fuzz.sh smoke [SECONDS]   build every target, replay fuzz/regressions, fuzz each
#                                     target SECONDS (default 10) — the CI run
#   scripts/fuzz.sh long [SECONDS]    fuzz each target SECONDS (default 600), continuing past
#                                     findings so one run collects all of them
#   scripts/fuzz.sh run TARGET [SECONDS]   one target, stopping at the first finding
#   scripts/fuzz.sh repro TARGET FILE...   run a target on saved inputs (shows the panic/OOM)
#   scripts/fuzz.sh seeds             regenerate fuzz/corpus/* from real stores (fuzz/seedgen)
#   scripts/fuzz.sh build | list
#
# Exit status: 0 only when every target built and no run found a crash, panic, OOM or hang.
# Findings land in fuzz/artifacts/<target>/; keep reproducers worth keeping in
# fuzz/regressions/<target>/ (smoke replays them every time).
#
# How this runs on a stable toolchain (the machine has exactly one, stable, and cannot fetch
# another): cargo-fuzz instruments with `-Cpasses=sancov-module` and
# `-Cllvm-args=-sanitizer-coverage-*` (inline 8-bit counters, pc table, trace-compares), which
# are stable rustc flags; only `-Zsanitizer=...` needs nightly. So the default build is
# `cargo fuzz build --sanitizer none`: real coverage-guided libFuzzer ("Loaded 1 modules (N
# inline 8-bit counters)" in the log), no nightly, no RUSTC_BOOTSTRAP. Targets are built with
# -O --debug-assertions: optimized, with overflow checks and debug assertions on (-O alone turns
# them off), so arithmetic on hostile lengths panics here instead of silently wrapping as it
# would in a release build. Panics are what catch bugs; out-of-memory is caught by libFuzzer's
# -rss_limit_mb.
#
# FUZZ_SANITIZER=address opts into AddressSanitizer by setting RUSTC_BOOTSTRAP=1 for the
# build (unstable -Zsanitizer on the stable compiler; the ASan runtime ships with it). It is
# slower, but it makes -malloc_limit_mb effective (libFuzzer needs the sanitizer's malloc hooks
# for it; without them a single huge allocation is only seen once its pages are touched) and
# prints a stack for OOMs and crashes. Use it to diagnose a finding.
#
# Environment: FUZZ_SANITIZER (none|address), FUZZ_RSS_MB (2048), FUZZ_MALLOC_MB (512),
# FUZZ_TIMEOUT (seconds per input before it counts as a hang, 10), FUZZ_TARGETS (space-separated
# subset), FUZZ_JOBS (targets fuzzed at once in `long`, 1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
fuzz_dir=$root/fuzz
export PATH="$HOME/.cargo/bin:$PATH"

sanitizer=${FUZZ_SANITIZER:-none}
rss_mb=${FUZZ_RSS_MB:-2048}
malloc_mb=${FUZZ_MALLOC_MB:-512}
timeout_s=${FUZZ_TIMEOUT:-10}
jobs=${FUZZ_JOBS:-1}

die() {
    echo "fuzz.sh: $*" >&2
    exit 2
}

ensure_cargo_fuzz() {
    if cargo fuzz --version >/dev/null 2>&1; then
        return
    fi
    echo "==> installing cargo-fuzz (once; cached in ~/.cargo/bin)"
    timeout 1800 cargo install cargo-fuzz --locked ||
        die "could not install cargo-fuzz: check that crates can be downloaded, or install it by hand with 'cargo install cargo-fuzz'"
}

case $sanitizer in
none)
    target_dir=$fuzz_dir/target
    build_env=()
    ;;
address)
    target_dir=$fuzz_dir/target/asan
    build_env=(RUSTC_BOOTSTRAP=1)
    ;;
*) die "FUZZ_SANITIZER=$sanitizer: use 'none' (default) or 'address'" ;;
esac
host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$host/release

targets() {
    if [[ -n ${FUZZ_TARGETS:-} ]]; then
        echo "$FUZZ_TARGETS"
    else
        (cd "$root" && cargo fuzz list --fuzz-dir "$fuzz_dir")
    fi
}

# The cargo feature (fuzz/Cargo.toml) a target needs.
feature_of() {
    case $1 in
    manifest | segment | peer) echo remote ;;
    control_request) echo control ;;
    *) echo "" ;;
    esac
}

build() {
    ensure_cargo_fuzz
    echo "==> building fuzz targets (sanitizer: $sanitizer)"
    local -a names
    read -r -a names <<<"$(targets | tr '\n' ' ')"
    local failed=0
    built=""
    for name in "${names[@]}"; do
        # One target at a time with only its feature, so a crate that does not compile right
        # now fails its own targets, not the engine's.
        if ! env "${build_env[@]}" cargo fuzz build -O --debug-assertions --sanitizer "$sanitizer" \
            --fuzz-dir "$fuzz_dir" --target-dir "$target_dir" \
            --features "$(feature_of "$name")" "$name"; then
            echo "FAIL $name: does not build (compiler output above)" >&2
            failed=1
        else
            built="$built $name"
        fi
    done
    return $failed
}

# Flags every run shares. The dictionary holds the store's magic numbers.
common_flags() {
    local t=$1
    local max_len=65536
    [[ $t == superblock ]] && max_len=8192
    # libFuzzer refuses to start when the artifact directory is missing (a fresh clone has
    # none: fuzz/artifacts is ignored by git).
    mkdir -p "$fuzz_dir/artifacts/$t"
    echo "-rss_limit_mb=$rss_mb -malloc_limit_mb=$malloc_mb -timeout=$timeout_s" \
        "-max_len=$max_len -dict=$fuzz_dir/snapblk.dict -artifact_prefix=$fuzz_dir/artifacts/$t/"
}

# Replays fuzz/regressions/<target>/*: every saved reproducer must now pass.
replay() {
    local t=$1 dir=$fuzz_dir/regressions/$1
    compgen -G "$dir/*" >/dev/null || return 0
    local log=$fuzz_dir/work/$t.regressions.log
    # shellcheck disable=SC2046
    if ! "$bin_dir/$t" $(common_flags "$t") -runs=1 "$dir"/* >"$log" 2>&1; then
        echo "FAIL $t: a saved reproducer in fuzz/regressions/$t still fails:" >&2
        grep -E "ERROR|panicked|Test unit written|Running:" "$log" | tail -n 8 >&2 || true
        return 1
    fi
    echo "ok   $t: $(find "$dir" -type f | wc -l) regression input(s) pass"
}

# Replays this run's new artifacts (at most 30) and counts them by panic location or libFuzzer
# error kind, so a run's findings read as a few distinct bugs rather than many files.
triage() {
    local t=$1 skip=$2 f kind
    find "$fuzz_dir/artifacts/$t" -type f -printf '%T@ %p\n' | sort -n | tail -n +$((skip + 1)) |
        head -n 30 | cut -d' ' -f2- | while read -r f; do
        # shellcheck disable=SC2046
        kind=$(timeout 120 "$bin_dir/$t" $(common_flags "$t") -runs=1 "$f" 2>&1 |
            grep -m1 -oE 'panicked at [^ ]+|ERROR: libFuzzer: [a-z-]+' || true)
        echo "${kind:-does not reproduce alone}"
    done | sort | uniq -c | sed 's/^/     /'
    echo "     (smallest input of a kind: ls -S fuzz/artifacts/$t | tail; show one with: scripts/fuzz.sh repro $t FILE)"
}

# Fuzzes one target for $2 seconds. $3 = "stop" (first finding ends the run) or "continue"
# (fork mode: findings are saved and fuzzing goes on). Prints the execution count.
fuzz_one() {
    local t=$1 secs=$2 mode=$3
    local work=$fuzz_dir/work/$t log=$fuzz_dir/work/$t.log
    mkdir -p "$work" "$fuzz_dir/artifacts/$t" "$fuzz_dir/corpus/$t"
    local -a extra=(-print_final_stats=1)
    if [[ $mode == continue ]]; then
        extra=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1)
    fi
    local before after rc=0
    before=$(find "$fuzz_dir/artifacts/$t" -type f | wc -l)
    # New inputs go to the first (working) directory; the committed seeds stay untouched.
    # shellcheck disable=SC2046
    timeout $((secs + 120)) "$bin_dir/$t" $(common_flags "$t") "${extra[@]}" \
        -max_total_time="$secs" "$work" "$fuzz_dir/corpus/$t" >"$log" 2>&1 || rc=$?
    after=$(find "$fuzz_dir/artifacts/$t" -type f | wc -l)
    local execs
    if [[ $mode == continue ]]; then
        # Fork mode prints "#<execs>: cov: ..." status lines; the last one is the total.
        execs=$(grep -oE '^#[0-9]+:' "$log" | tail -n 1 | tr -d '#:')
    else
        execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    fi
    execs=${execs:-0}
    if ((rc != 0 || after > before)); then
        echo "FAIL $t: $execs executions in ${secs}s, exit $rc (log $log)"
        if [[ $mode == continue ]]; then
            echo "     $((after - before)) new file(s) in fuzz/artifacts/$t/, by kind:"
            triage "$t" "$before"
        else
            # The first finding ends the run; its input may already be a known artifact.
            grep -m1 -A1 -E 'panicked at|ERROR: libFuzzer' "$log" | sed 's/^/     /' || true
            grep -m1 'Test unit written to' "$log" | sed 's/^/     /' || true
        fi
        return 1
    fi
    echo "ok   $t: $execs executions in ${secs}s, no finding (log $log)"
}

fuzz_all() {
    local secs=$1 mode=$2 failed=0
    local -a names
    read -r -a names <<<"$(targets | tr '\n' ' ')"
    if ((jobs <= 1)); then
        for name in "${names[@]}"; do
            fuzz_one "$name" "$secs" "$mode" || failed=1
        done
    else
        # Several targets at once (each is single-threaded); results are printed in order.
        local -a pids=()
        for name in "${names[@]}"; do
            while :; do
                local running=0 p
                for p in "${pids[@]}"; do
                    if kill -0 "$p" 2>/dev/null; then running=$((running + 1)); fi
                done
                ((running < jobs)) && break
                sleep 1
            done
            fuzz_one "$name" "$secs" "$mode" >"$fuzz_dir/work/$name.result" 2>&1 &
            pids+=($!)
        done
        local i
        for i in "${!pids[@]}"; do
            wait "${pids[$i]}" || failed=1
            cat "$fuzz_dir/work/${names[$i]}.result"
        done
    fi
    return $failed
}

seeds() {
    echo "==> regenerating seed corpora from real stores"
    cargo build --manifest-path "$fuzz_dir/seedgen/Cargo.toml" --target-dir "$fuzz_dir/target/seedgen"
    "$fuzz_dir/target/seedgen/debug/snapblk-fuzz-seedgen" "$fuzz_dir/corpus"
}

cmd=${1:-}
built=""
mkdir -p "$fuzz_dir/work"
case $cmd in
build) build ;;
list) targets ;;
smoke)
    secs=${2:-10}
    failed=0
    build || failed=1
    # Whatever built is still fuzzed, so one broken crate does not hide the others' results.
    for t in $built; do replay "$t" || failed=1; done
    if [[ -n ${built// /} ]]; then FUZZ_TARGETS=$built fuzz_all "$secs" stop || failed=1; fi
    exit $failed
    ;;
long)
    secs=${2:-600}
    failed=0
    build || failed=1
    if [[ -n ${built// /} ]]; then FUZZ_TARGETS=$built fuzz_all "$secs" continue || failed=1; fi
    exit $failed
    ;;
run)
    [[ -n ${2:-} ]] || die "usage: scripts/fuzz.sh run TARGET [SECONDS]"
    FUZZ_TARGETS=$2 build
    FUZZ_TARGETS=$2 fuzz_all "${3:-60}" stop
    ;;
repro)
    [[ -n ${2:-} && -n ${3:-} ]] || die "usage: scripts/fuzz.sh repro TARGET FILE..."
    t=$2
    shift 2
    FUZZ_TARGETS=$t build
    # shellcheck disable=SC2046
    RUST_BACKTRACE=1 "$bin_dir/$t" $(common_flags "$t") -runs=1 "$@"
    ;;
seeds) seeds ;;
*)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
