#!/usr/bin/env bash
# Build the guest's initramfs: busybox for the basics, real host tools (bash, util-linux,
# e2fsprogs, xfsprogs, fio, dmsetup) with the shared libraries ldd lists at the same
# paths, the cached kernel modules, tests/vm itself, and snapblk when it has been built.
#
# Usage: build-initramfs.sh OUTPUT.cpio
# Env:   VM_EXTRA_BINS  space-separated host executables to add (go to /usr/local/bin)
#        VM_GUEST_ENV   "NAME=value ..." exported to the scenario
#        SNAPBLK_BIN    snapblk binary to add (default target/release/snapblk, if present)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

out=${1:?usage: build-initramfs.sh OUTPUT.cpio}
[[ -s $VM_KERNEL_DIR/modules.order ]] || vm_die "no cached kernel modules in $VM_KERNEL_DIR: run tests/vm/fetch-kernel.sh"

# Host tools the scenarios may call, by name; util-linux's losetup is wanted over busybox's
# because only it has --direct-io.
GUEST_TOOLS="bash losetup blkdiscard blockdev wipefs mount umount mountpoint findmnt lsblk blkid
  fallocate fsfreeze
  mke2fs mkfs.ext4 e2fsck fsck.ext4 dumpe2fs tune2fs
  mkfs.xfs xfs_repair xfs_io xfs_db
  fio dmsetup timeout nohup od"

stage=$(mktemp -d "${TMPDIR:-/tmp}/snapblk-vm-root.XXXXXX")
trap 'rm -rf "$stage"' EXIT

declare -A staged
# Make host path $1 exist in the stage exactly as on the host: every symlink along the way
# is recreated verbatim (merged-/usr links like /lib64 -> usr/lib64 included) and files are
# only ever written at their fully resolved path, so nothing is written through a link
# that points back into the host.
stage_path() {
    local p=$1
    [[ $p == / || -n ${staged[$p]:-} ]] && return 0
    staged[$p]=1
    local parent rparent name host dst target
    parent=$(dirname "$p")
    name=$(basename "$p")
    stage_path "$parent"
    rparent=$(readlink -f "$parent")
    host=$rparent/$name
    dst=$stage$rparent/$name
    [[ -L $dst || -e $dst ]] && return 0
    if [[ -L $host ]]; then
        target=$(readlink "$host")
        ln -s "$target" "$dst"
        if [[ $target == /* ]]; then
            stage_path "$(realpath -ms "$target")"
        else
            stage_path "$(realpath -ms "$rparent/$target")"
        fi
    elif [[ -d $host ]]; then
        mkdir "$dst"
    elif [[ -e $host ]]; then
        cp -p "$host" "$dst"
    else
        vm_die "cannot stage $p: not on this host"
    fi
}

# Stage the shared libraries (and the dynamic loader) an executable needs.
stage_libs() {
    local lib
    # Static executables make ldd fail; they need nothing.
    for lib in $(ldd "$1" 2>/dev/null | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }'); do
        stage_path "$lib"
    done
}

for tool in $GUEST_TOOLS; do
    path=$(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v "$tool") \
        || vm_die "'$tool' not found on the host: run scripts/deps.sh"
    stage_path "$path"
    stage_libs "$path"
done

busybox=$(command -v busybox) || vm_die "busybox not found: run scripts/deps.sh"
ldd "$busybox" >/dev/null 2>&1 && vm_die "$busybox is dynamically linked: install busybox-static"
stage_path "$busybox"
# Applets fill in only what the real tools above do not provide.
while read -r applet; do
    stage_path "/$(dirname "$applet")"
    dir=$(readlink -f "/$(dirname "$applet")")
    [[ -e $stage$dir/$(basename "$applet") || -L $stage$dir/$(basename "$applet") ]] \
        || ln -s "$busybox" "$stage$dir/$(basename "$applet")"
done < <("$busybox" --list-full)

# Config files the filesystem tools read if present.
for f in /etc/mke2fs.conf /etc/e2fsck.conf; do
    [[ -e $f ]] && stage_path "$f"
done

mkdir -p "$stage"/{proc,sys,dev,tmp,run,root,vm/modules,snapblk/tests,usr/local/bin,etc}
cp "$VM_KERNEL_DIR"/modules/*.ko "$stage/vm/modules/"
cp "$VM_KERNEL_DIR/modules.order" "$stage/vm/modules.order"
cp -r "$VM_DIR" "$stage/snapblk/tests/vm"
echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
echo "root:x:0:" >"$stage/etc/group"

snapblk=${SNAPBLK_BIN:-$REPO_ROOT/target/release/snapblk}
if [[ -x $snapblk ]]; then
    mkdir -p "$stage/snapblk/target/release"
    cp "$snapblk" "$stage/snapblk/target/release/snapblk"
    ln -s /snapblk/target/release/snapblk "$stage/usr/local/bin/snapblk"
    stage_libs "$snapblk"
    vm_log "guest gets snapblk from $snapblk"
elif [[ -n ${SNAPBLK_BIN:-} ]]; then
    vm_die "SNAPBLK_BIN=$SNAPBLK_BIN is not an executable file"
fi
# The power-cut scenario's log replayer, built with the workspace (tests/src/bin).
replayer=$REPO_ROOT/target/release/snapblk-replay-log
if [[ -x $replayer ]]; then
    cp "$replayer" "$stage/usr/local/bin/snapblk-replay-log"
    stage_libs "$replayer"
fi
# Garage, the real S3 server, for the S3 shipping scenario (the guest has no network, so
# the server runs in the guest on its loopback), with the helper that starts it.
garage=${GARAGE_BIN:-$(command -v garage || true)}
[[ -n $garage ]] || garage=$HOME/.cargo/bin/garage
if [[ -x $garage ]]; then
    cp "$garage" "$stage/usr/local/bin/garage"
    stage_libs "$garage"
    mkdir -p "$stage/snapblk/shipper/tests"
    cp "$REPO_ROOT/shipper/tests/garage.sh" "$stage/snapblk/shipper/tests/garage.sh"
    vm_log "guest gets garage from $garage"
else
    vm_log "no garage binary (scripts/garage.sh ensure): the S3 scenario will fail"
fi
for bin in ${VM_EXTRA_BINS:-}; do
    [[ -f $bin && -x $bin ]] || vm_die "VM_EXTRA_BINS entry $bin is not an executable file"
    cp "$bin" "$stage/usr/local/bin/"
    stage_libs "$bin"
done

# VM_GUEST_ENV="NAME=value ...": exported to the scenario by init.
: >"$stage/vm/env"
for kv in ${VM_GUEST_ENV:-}; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || vm_die "VM_GUEST_ENV entry '$kv' is not NAME=value"
    printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}" >>"$stage/vm/env"
done

cp "$VM_DIR/guest-init" "$stage/init"
chmod 0755 "$stage/init"

mkdir -p "$(dirname "$out")"
# Uncompressed: the kernel unpacks it faster than it could gunzip under TCG emulation.
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$out.tmp"
mv "$out.tmp" "$out"
vm_log "initramfs $out ($(du -m "$out" | cut -f1) MiB)"
