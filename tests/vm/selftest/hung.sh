#!/usr/bin/env bash
# Harness self-test (expected to FAIL as a hung task): writeback into a suspended
# device-mapper device blocks fsync in D state, as I/O stuck in a broken ublk daemon would.
# (O_DIRECT waits would not do: the block layer sleeps with a timeout there precisely to
# stay invisible to the hung-task detector.)
# Self-tests run only inside the test VM (some crash, hang or power off their machine).
[[ ${SNAPBLK_VM_GUEST:-0} == 1 ]] || { echo "refusing to run $0 outside the test VM (run it with VM_FORCE=1)"; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/../scenarios/lib.sh"
must "64 MiB backing file" truncate -s 64M "$VM_SCRATCH/hung.img"
must "loop device" loop_attach LOOP "$VM_SCRATCH/hung.img"
must "dm linear over it" dm_create hung "0 $((64 * 2048)) linear $LOOP 0"
must "suspend the dm device" dmsetup suspend --noudevsync hung
note "writing to the suspended device: this blocks until the hung-task detector fires"
dd if=/dev/zero of=/dev/mapper/hung bs=4k count=1 conv=fsync
finish
