#!/usr/bin/env bash
# Fetch a ublk-capable kernel (Debian bookworm-backports 6.12 "cloud" flavour: the host
# kernel has no CONFIG_BLK_DEV_UBLK) and cache bzImage + decompressed modules under
# $VM_CACHE/kernel. A second run with everything present does no network I/O.
#
# Env: VM_KERNEL_PKG     exact package name to use (default: newest matching 6.12 cloud)
#      VM_KERNEL_SUITE   suite holding it (default bookworm-backports)
#      SNAPBLK_VM_MIRROR mirror URL (default: the URIs of the host's Debian apt source)
#      VM_EXTRA_MODULES  more module names to extract (dependencies follow)
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SUITE=${VM_KERNEL_SUITE:-bookworm-backports}
PKG_RE='^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$'
APT_DIR=$VM_CACHE/apt
DEB_DIR=$VM_CACHE/debs

for tool in apt-get apt-cache dpkg-deb xz flock; do
    command -v "$tool" >/dev/null || vm_die "'$tool' not found: run scripts/deps.sh (needs a Debian-like host)"
done

mkdir -p "$VM_CACHE"
exec 9>"$VM_CACHE/.lock"
# Two parallel runs (CI matrix, a developer's second terminal) must not unpack over each other.
flock -w 900 9 || vm_die "timed out waiting for $VM_CACHE/.lock (another fetch running?)"

# True when bzImage and every wanted module (as recorded in modules.order) are present.
kernel_complete() {
    [[ -s $VM_KERNEL_DIR/bzImage && -s $VM_KERNEL_DIR/modules.order ]] || return 1
    local m
    for m in $VM_MODULES; do
        grep -qx "${m//-/_}" "$VM_KERNEL_DIR/modules.wanted" 2>/dev/null || return 1
    done
}

if kernel_complete && [[ ${VM_KERNEL_PKG:-$(cat "$VM_KERNEL_DIR/package")} == "$(cat "$VM_KERNEL_DIR/package")" ]]; then
    echo "kernel cached: $(cat "$VM_KERNEL_DIR/package") ($VM_KERNEL_DIR)"
    exit 0
fi

# Print "URI<TAB>Signed-By" of the host's plain-codename Debian source (not -security or
# -updates): that mirror also serves the backports suite, so no host name lives in the repo.
host_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        awk '
            function flush() {
                if (types ~ /(^| )deb( |$)/ && uris != "") {
                    n = split(suites, s, " ")
                    for (i = 1; i <= n; i++) if (s[i] !~ /-/) { split(uris, u, " "); print u[1] "\t" key; found = 1; exit }
                }
                types = uris = suites = key = ""
            }
            /^[ \t]*$/ { flush(); next }
            /^Types:/     { sub(/^Types:[ \t]*/, "");     types = $0 }
            /^URIs:/      { sub(/^URIs:[ \t]*/, "");      uris = $0 }
            /^Suites:/    { sub(/^Suites:[ \t]*/, "");    suites = $0 }
            /^Signed-By:/ { sub(/^Signed-By:[ \t]*/, ""); key = $0 }
            END { if (!found) flush() }
        ' "$f" | head -n1 | grep . && return 0
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        # deb [opts] URI SUITE COMPONENTS...
        sed -E 's/\[[^]]*\]//' "$f" | awk '$1 == "deb" && $3 !~ /-/ { print $2 "\t"; exit }' | grep . && return 0
    done
    return 1
}

download_deb() {
    local mirror key line
    if [[ -n ${SNAPBLK_VM_MIRROR:-} ]]; then
        mirror=$SNAPBLK_VM_MIRROR key=
    else
        line=$(host_mirror) || vm_die "no Debian apt source found in /etc/apt; set SNAPBLK_VM_MIRROR to a Debian mirror URL"
        mirror=${line%%$'\t'*} key=${line#*$'\t'}
    fi
    if [[ -z $key && -r /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
        key=/usr/share/keyrings/debian-archive-keyring.gpg
    fi

    # Private apt state: the system's lists, caches and sources stay untouched.
    mkdir -p "$APT_DIR"/{sources.list.d,lists/partial,cache,archives/partial} "$DEB_DIR"
    : >"$APT_DIR/sources.list"
    {
        echo "Types: deb"
        echo "URIs: $mirror"
        echo "Suites: $SUITE"
        echo "Components: main"
        [[ -n $key ]] && echo "Signed-By: $key"
    } >"$APT_DIR/sources.list.d/snapblk-vm.sources"
    local apt_opts=(
        -o Dir::Etc::SourceList="$APT_DIR/sources.list"
        -o Dir::Etc::SourceParts="$APT_DIR/sources.list.d"
        -o Dir::State::Lists="$APT_DIR/lists"
        -o Dir::Cache="$APT_DIR/cache"
        -o Dir::Cache::Archives="$APT_DIR/archives"
        -o Acquire::Languages=none
        -o APT::Sandbox::User="$(id -un)"
        -o Acquire::Retries=3
    )
    vm_log "updating package index of $SUITE from $mirror (private apt dir $APT_DIR)"
    apt-get "${apt_opts[@]}" -qq update \
        || vm_die "apt-get update of $SUITE from $mirror failed: check the network or set SNAPBLK_VM_MIRROR"

    local pkg=${VM_KERNEL_PKG:-}
    if [[ -z $pkg ]]; then
        pkg=$(apt-cache "${apt_opts[@]}" pkgnames linux-image-6.12 | grep -E "$PKG_RE" | sort -V | tail -n1) || true
        [[ -n $pkg ]] || vm_die "no package matching $PKG_RE in $SUITE at $mirror; set VM_KERNEL_PKG"
    fi
    vm_log "downloading $pkg"
    rm -f "$DEB_DIR"/*.deb.part
    (cd "$DEB_DIR" && apt-get "${apt_opts[@]}" -qq download "$pkg") \
        || vm_die "apt-get download $pkg failed: check the network or set VM_KERNEL_PKG"
    echo "$pkg" >"$DEB_DIR/package"
}

# Reuse a downloaded .deb (e.g. when only the module list grew); download otherwise.
deb=
pkg=${VM_KERNEL_PKG:-$(cat "$DEB_DIR/package" 2>/dev/null || true)}
if [[ -n $pkg && -d $DEB_DIR ]]; then
    deb=$(find "$DEB_DIR" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
fi
if [[ -z $deb ]]; then
    rm -f "$DEB_DIR"/*.deb
    download_deb
    pkg=$(cat "$DEB_DIR/package")
    deb=$(find "$DEB_DIR" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)
    [[ -n $deb ]] || vm_die "apt-get download reported success but no ${pkg}_*.deb in $DEB_DIR"
else
    vm_log "reusing downloaded $(basename "$deb")"
fi

tmp=$(mktemp -d "$VM_CACHE/extract.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp/root" || vm_die "cannot unpack $deb (corrupt download? delete $DEB_DIR and rerun)"

vmlinuz=$(find "$tmp/root/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
[[ -n $vmlinuz ]] || vm_die "$deb has no boot/vmlinuz-*"
kver=${vmlinuz##*/vmlinuz-}
moddir=$tmp/root/lib/modules/$kver
[[ -d $moddir ]] || moddir=$tmp/root/usr/lib/modules/$kver
[[ -d $moddir ]] || vm_die "$deb has no lib/modules/$kver"
config=$(find "$tmp/root/boot" -maxdepth 1 -name 'config-*' | head -n1)
if [[ -n $config ]] && ! grep -q '^CONFIG_BLK_DEV_UBLK=[ym]' "$config"; then
    vm_die "$pkg lacks CONFIG_BLK_DEV_UBLK; pick another package with VM_KERNEL_PKG"
fi

# Index every module of the package by normalised name (dm-mod and dm_mod are one module).
declare -A path_of
while IFS= read -r -d '' ko; do
    name=${ko##*/}
    name=${name%.ko*}
    path_of[${name//-/_}]=$ko
done < <(find "$moddir" -name '*.ko*' -print0)

new=$tmp/kernel
mkdir -p "$new/modules"
declare -A done_mod
order=()
# Depth-first over depends=: each module is listed after everything it needs.
add_module() {
    local name=${1//-/_} dep deps ko
    [[ -n ${done_mod[$name]:-} ]] && return 0
    done_mod[$name]=visiting
    ko=${path_of[$name]:-}
    [[ -n $ko ]] || vm_die "module $1 is not in $pkg (built in? then drop it from VM_EXTRA_MODULES)"
    case $ko in
        *.xz) xz -dc "$ko" >"$new/modules/$name.ko" ;;
        *.zst) zstd -qdc "$ko" >"$new/modules/$name.ko" ;;
        *.gz) gzip -dc "$ko" >"$new/modules/$name.ko" ;;
        *) cp "$ko" "$new/modules/$name.ko" ;;
    esac
    deps=$(tr '\0' '\n' <"$new/modules/$name.ko" | sed -n 's/^depends=//p' | head -n1)
    for dep in ${deps//,/ }; do
        add_module "$dep"
    done
    order+=("$name")
    done_mod[$name]="done"
}
for m in $VM_MODULES; do
    add_module "$m"
done

cp "$vmlinuz" "$new/bzImage"
[[ -n $config ]] && cp "$config" "$new/config"
printf '%s\n' "${order[@]}" >"$new/modules.order"
for m in $VM_MODULES; do echo "${m//-/_}"; done >"$new/modules.wanted"
echo "$kver" >"$new/version"
echo "$pkg" >"$new/package"
rm -rf "$VM_KERNEL_DIR.old"
[[ -d $VM_KERNEL_DIR ]] && mv "$VM_KERNEL_DIR" "$VM_KERNEL_DIR.old"
mv "$new" "$VM_KERNEL_DIR"
rm -rf "$VM_KERNEL_DIR.old"
echo "kernel ready: $pkg ($kver), modules: ${order[*]} ($VM_KERNEL_DIR)"
