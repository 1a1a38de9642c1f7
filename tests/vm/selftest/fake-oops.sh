#!/usr/bin/env bash
# Harness self-test (expected to FAIL as a kernel oops although every step passes): prints
# the first lines of a real x86 oops, as the kernel would on the console, to prove the
# harness fails a run on kernel trouble even when the scenario itself says all is well.
source "$(dirname "${BASH_SOURCE[0]}")/../scenarios/lib.sh"
step "true succeeds" true
echo "[   12.345678] BUG: kernel NULL pointer dereference, address: 0000000000000008"
echo "[   12.345901] Oops: Oops: 0000 [#1] PREEMPT SMP NOPTI"
finish
