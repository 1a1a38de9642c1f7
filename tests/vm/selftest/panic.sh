#!/usr/bin/env bash
# Harness self-test (expected to FAIL as a kernel panic): crash the kernel via sysrq.
# Self-tests run only inside the test VM (some crash, hang or power off their machine).
[[ ${SNAPBLK_VM_GUEST:-0} == 1 ]] || { echo "refusing to run $0 outside the test VM (run it with VM_FORCE=1)"; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/../scenarios/lib.sh"
note "triggering a kernel crash"
echo 1 >/proc/sys/kernel/sysrq
echo c >/proc/sysrq-trigger
sleep 60
finish
