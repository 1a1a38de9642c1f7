#!/usr/bin/env bash
# Harness self-test: SNAPBLK_BIN and VM_EXTRA_BINS reach the guest with their libraries.
# Run by selftest.sh with SNAPBLK_BIN=<stub answering --help / create --help>,
# VM_EXTRA_BINS=<a dynamically linked binary> and VM_GUEST_ENV=SELFTEST_BIN=<its name>.
source "$(dirname "${BASH_SOURCE[0]}")/../scenarios/lib.sh"
step "SNAPBLK_BIN is set" test -n "${SNAPBLK_BIN:-}"
snapblk_runs() { "$SNAPBLK_BIN" --help | grep -q 'snapblk stub'; }
step "snapblk runs" snapblk_runs
step "snapblk_has create" snapblk_has create
no_bogus() { ! snapblk_has bogus-command; }
step "snapblk_has rejects an unknown command" no_bogus
extra_runs() {
    local path
    path=$(command -v "${SELFTEST_BIN:?}") || return 1
    [[ ${SNAPBLK_VM_GUEST:-0} == 0 || $path == /usr/local/bin/* ]] || { echo "found at $path"; return 1; }
    "$SELFTEST_BIN" "${SELFTEST_ARG:---version}"
}
step "extra binary from VM_EXTRA_BINS runs (${SELFTEST_ARG:---version})" extra_runs
finish
