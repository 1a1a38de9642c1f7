#!/usr/bin/env bash
# The whole snapblk test suite, from a fresh clone: installs what it needs (apt packages, the
# VM kernel, Garage), then runs unit, model, crash and integration tests, the fuzz smoke run and
# the VM end-to-end scenarios. Idempotent: installed pieces are cached and skipped.
#
#   scripts/test.sh            everything (what CI runs)
#   scripts/test.sh quick      host tests only (no VM, no Garage install)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mode=${1:-full}

started=$SECONDS
stage() { printf '\n==> %s (%ss elapsed)\n' "$*" "$((SECONDS - started))"; }

# Stages after the build all run even when one fails, so a single run shows every failure;
# the exit status is non-zero if any failed.
failed=()
check() {
    local name=$1
    shift
    if ! "$@"; then
        echo "FAILED: $name" >&2
        failed+=("$name")
    fi
}

# cargo installed by rustup lives in ~/.cargo/bin, which a non-login shell may lack.
export PATH="$HOME/.cargo/bin:$PATH"

stage "dependencies"
if [[ $mode == full ]]; then
    scripts/deps.sh vm
    scripts/garage.sh ensure
else
    scripts/deps.sh
fi

stage "build (release)"
cargo build --release --workspace --all-targets

stage "host tests: unit, model, crash, shipper against Garage, integration"
# Garage was installed above: a missing server must fail the S3 tests, not skip them.
if [[ $mode == full ]]; then export SNAPBLK_REQUIRE_GARAGE=1; fi
check "host tests" cargo test --release --workspace

stage "benchmark smoke (keeps the bench working; never judges speed)"
check "benchmark smoke" cargo run --release -q -p snapblk-bench -- host --quick

stage "fuzz smoke: every regression input, then a few seconds per target"
check "fuzz smoke" scripts/fuzz.sh smoke "${FUZZ_SECONDS:-3}"

if [[ $mode == full ]]; then
    stage "VM end-to-end scenarios"
    check "VM scenarios" tests/vm/run.sh
fi

if ((${#failed[@]})); then
    stage "FAILED after $((SECONDS - started))s: ${failed[*]}"
    exit 1
fi
stage "all passed in $((SECONDS - started))s"
