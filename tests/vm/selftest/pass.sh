#!/usr/bin/env bash
# Harness self-test: a scenario that passes with one step.
source "$(dirname "${BASH_SOURCE[0]}")/../scenarios/lib.sh"
step "true succeeds" true
finish
