#!/usr/bin/env bash
# Harness self-test (expected to FAIL with no end marker): the VM powers off under the
# scenario, as when init or the kernel dies without a panic message.
# Self-tests run only inside the test VM (some crash, hang or power off their machine).
[[ ${SNAPBLK_VM_GUEST:-0} == 1 ]] || { echo "refusing to run $0 outside the test VM (run it with VM_FORCE=1)"; exit 2; }
poweroff -f
