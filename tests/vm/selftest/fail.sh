#!/usr/bin/env bash
# Harness self-test (expected to FAIL with rc=1): one step fails.
source "$(dirname "${BASH_SOURCE[0]}")/../scenarios/lib.sh"
step "true succeeds" true
step "false fails (on purpose)" false
finish
