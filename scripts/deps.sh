#!/usr/bin/env bash
# Install what building and testing snapblk needs on a Debian-like host. Idempotent and
# quiet when everything is present; safe for CI (root, no stdin).
#
#   scripts/deps.sh                 build + VM-harness packages
#   scripts/deps.sh vm              the same, plus the VM kernel (tests/vm/fetch-kernel.sh)
#   scripts/deps.sh --vm-packages   only what tests/vm needs on the host (used by run.sh)
set -euo pipefail

# bindgen (libublk) needs libclang; the ublk uapi headers come with linux-libc-dev.
BUILD_PACKAGES="libclang-dev linux-libc-dev"
# Host side of tests/vm: qemu, and the tools copied into the guest's initramfs
# (losetup lives in "mount" on Debian 12, blkdiscard in util-linux).
VM_PACKAGES="qemu-system-x86 busybox-static cpio fio xfsprogs e2fsprogs dmsetup zstd xz-utils util-linux mount"

# Install the named packages that dpkg does not report as installed.
ensure_packages() {
    local missing=() p status
    for p in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ $status == "install ok installed" ]] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    command -v apt-get >/dev/null || {
        echo "deps: missing ${missing[*]} and no apt-get here: install them with your package manager" >&2
        exit 1
    }
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || {
            echo "deps: missing ${missing[*]}: rerun as root (or install sudo)" >&2
            exit 1
        }
        sudo=(sudo -n)
    fi
    echo "deps: installing ${missing[*]}" >&2
    # The index may be stale or absent on a fresh machine; refresh only when installing.
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
}

case ${1:-} in
    "")
        # shellcheck disable=SC2086
        ensure_packages $BUILD_PACKAGES $VM_PACKAGES
        ;;
    vm)
        # shellcheck disable=SC2086
        ensure_packages $BUILD_PACKAGES $VM_PACKAGES
        "$(dirname "${BASH_SOURCE[0]}")/../tests/vm/fetch-kernel.sh"
        ;;
    --vm-packages)
        # shellcheck disable=SC2086
        ensure_packages $VM_PACKAGES
        ;;
    -h | --help)
        sed -n '2,7s/^# \{0,1\}//p' "$0"
        ;;
    *)
        echo "deps: unknown argument '$1' (expected nothing, 'vm' or --vm-packages)" >&2
        exit 2
        ;;
esac
