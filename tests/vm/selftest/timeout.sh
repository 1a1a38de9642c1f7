#!/usr/bin/env bash
# Harness self-test (expected to FAIL with a timeout): never finishes on its own.
source "$(dirname "${BASH_SOURCE[0]}")/../scenarios/lib.sh"
note "sleeping far past VM_TIMEOUT"
sleep 3600
finish
