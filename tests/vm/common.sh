# Shared host-side settings for the VM harness. Sourced, not executed.
# shellcheck disable=SC2034  # used by the scripts that source this file
# shellcheck shell=bash

VM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$VM_DIR/../.." && pwd)

# Kernel and modules live outside the work tree so CI caches and later runs reuse them.
VM_CACHE=${SNAPBLK_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/snapblk-vm}
VM_KERNEL_DIR=$VM_CACHE/kernel

# Modules the scenarios may need; their `depends=` closure is added automatically.
# virtio_blk carries the VM_OUT archive back to the host.
VM_MODULES_DEFAULT="ublk_drv loop dm-mod dm-bufio dm-snapshot dm-flakey dm-log-writes libcrc32c xfs virtio_blk"
VM_MODULES="$VM_MODULES_DEFAULT ${VM_EXTRA_MODULES:-}"

# Per-run build products (initramfs, staging tree) and console logs go under target/.
VM_BUILD=$REPO_ROOT/target/vm
VM_LOGS=$REPO_ROOT/target/vm-logs
# Files a scenario leaves in $VM_OUT land in $VM_OUT_ROOT/NAME/ (bench results).
VM_OUT_ROOT=$REPO_ROOT/target/vm-out

vm_log() { printf 'vm: %s\n' "$*" >&2; }
vm_die() { printf 'vm: error: %s\n' "$*" >&2; exit 1; }
