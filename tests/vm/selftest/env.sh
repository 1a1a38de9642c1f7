#!/usr/bin/env bash
# Harness self-test: VM_GUEST_ENV reaches the scenario, the harness variables are set.
source "$(dirname "${BASH_SOURCE[0]}")/../scenarios/lib.sh"
step "SELFTEST_A from VM_GUEST_ENV" expect_eq SELFTEST_A "${SELFTEST_A:-}" one
step "SELFTEST_B keeps its '='" expect_eq SELFTEST_B "${SELFTEST_B:-}" two=2
step "VM_SCRATCH is a writable directory" test -d "$VM_SCRATCH" -a -w "$VM_SCRATCH"
step "SNAPBLK_REPO holds the scenarios" test -f "$SNAPBLK_REPO/tests/vm/scenarios/lib.sh"
step "util-linux losetup wins over busybox's" bash -c 'losetup --help 2>&1 | grep -q -- --direct-io'
step "VM_OUT is a writable directory" test -d "$VM_OUT" -a -w "$VM_OUT"
leave_file() { echo "out from $(uname -r)" >"$VM_OUT/hello.txt"; }
step "leave a file in VM_OUT" leave_file
finish
