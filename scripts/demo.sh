#!/usr/bin/env bash
# The main job: the whole snapblk story on a real ublk device, narrated — create, mkfs, mount,
# write, snapshot, change, restore, verify every checksum, ship off-site, rebuild from there.
# Installs what it needs (apt packages; a ublk-capable kernel for the VM) and skips what is
# there. Runs on the host when /dev/ublk-control exists (as root), otherwise inside the
# project's qemu VM (tests/vm).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
started=$SECONDS

echo "==> installing what is missing"
if [[ -e /dev/ublk-control ]]; then scripts/deps.sh; else scripts/deps.sh vm; fi
echo "==> building snapblk"
cargo build --release -p snapblk
echo "==> running the story $([[ -e /dev/ublk-control ]] && echo 'on this host' || echo 'in the VM (this kernel has no ublk)')"
VM_TIMEOUT=${VM_TIMEOUT:-900} VM_GUEST_ENV="VM_VERBOSE=1" tests/vm/run.sh demo/story.sh
echo
echo "snapblk demo: SUCCESS in $((SECONDS - started))s — snapshot, rollback, shipping and a byte-exact rebuild from the remote, all verified on a real ublk device."
