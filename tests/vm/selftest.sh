#!/usr/bin/env bash
# Prove the harness catches what it must: runs tests/vm/run.sh on the scenarios in
# selftest/ (always in the VM) and checks each exit status and failure reason.
# Not part of the default scenario list. Takes about 3 minutes.
set -uo pipefail
VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export VM_FORCE=1
passed=0 failed=0

# expect NAME WANT_RC WANT_TEXT [ENV...]  run selftest/NAME.sh, check rc and the output.
expect() {
    local name=$1 want_rc=$2 want_text=$3 out rc
    shift 3
    out=$(mktemp)
    env "$@" "$VM_DIR/run.sh" "$VM_DIR/selftest/$name.sh" >"$out" 2>&1
    rc=$?
    if [[ $rc == "$want_rc" ]] && grep -aq -- "$want_text" "$out"; then
        echo "ok - $name: rc=$rc, reports '$want_text'"
        passed=$((passed + 1))
    else
        echo "not ok - $name: rc=$rc (want $want_rc), '$want_text' $(grep -aq -- "$want_text" "$out" && echo found || echo missing)"
        tail -n 30 "$out" | sed 's/^/#   /'
        failed=$((failed + 1))
    fi
    rm -f "$out"
}

expect pass 0 "PASS selftest/pass.sh"
expect env 0 "PASS selftest/env.sh" VM_GUEST_ENV="SELFTEST_A=one SELFTEST_B=two=2"
out_file=$VM_DIR/../../target/vm-out/selftest_env/hello.txt
if grep -q '^out from 6\.12' "$out_file" 2>/dev/null; then
    echo "ok - env: the file left in VM_OUT reached the host"
    passed=$((passed + 1))
else
    echo "not ok - env: $out_file missing or wrong: $(cat "$out_file" 2>&1)"
    failed=$((failed + 1))
fi
# A stub stands in for snapblk; zstd is a dynamically linked binary the guest lacks.
stub=$(mktemp)
# shellcheck disable=SC2016  # the stub's own $1/$2
printf '%s\n' '#!/bin/bash' 'case "$1 ${2:-}" in' \
    '"--help ") echo "snapblk stub: create, snapshot" ;;' \
    '"create --help") echo "usage: snapblk create" ;;' \
    '*) echo "unknown command $1" >&2; exit 2 ;;' 'esac' >"$stub"
chmod +x "$stub"
expect bins 0 "PASS selftest/bins.sh" SNAPBLK_BIN="$stub" VM_EXTRA_BINS="$(command -v zstd)" VM_GUEST_ENV=SELFTEST_BIN=zstd
rm -f "$stub"
expect fail 1 "scenario exited with rc=1"
expect timeout 124 "FAIL selftest/timeout.sh .*timeout: no end marker after 30s" VM_TIMEOUT=30
expect timeout 124 "the guest stopped the scenario after 90s" VM_TIMEOUT=150
expect fake-oops 125 "kernel oops/panic/BUG: .*BUG: kernel NULL pointer dereference"
expect fake-oops 125 "kernel oops/panic/BUG: .*BUG: kernel NULL pointer dereference" VM_HOST=1 VM_FORCE=
expect panic 125 "kernel oops/panic/BUG: .*Kernel panic - not syncing"
expect hung 125 "kernel hung task: .*blocked for more than 10 seconds" VM_TIMEOUT=150 VM_HUNG_TASK_SECS=10
expect hung 124 "vm-init:   [0-9]* D (disk sleep) dd " VM_TIMEOUT=150 VM_HUNG_TASK_SECS=0
expect nomarker 126 "no 'SNAPBLK-VM-RESULT' end marker"
echo "$passed passed, $failed failed"
((failed == 0))
