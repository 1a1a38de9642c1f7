# Shared helpers for VM scenarios. Source it first:
#     source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# then run steps and end with `finish`, which prints the "N passed, M failed" line CI
# counts and exits non-zero when a step failed.
#
# Environment given by the harness (guest and host mode alike):
#   VM_SCRATCH      writable scratch directory (guest: tmpfs /tmp)
#   SNAPBLK_BIN     the snapblk binary, when one was built (unset otherwise)
#   SNAPBLK_REPO    repository root as seen by the scenario
#   SNAPBLK_VM_GUEST  1 inside the VM, 0 in host mode
#   VM_VERBOSE=1    show every step's output, not only failing ones
# shellcheck shell=bash

set -uo pipefail
# Full paths win over any same-named busybox applet.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
: "${VM_SCRATCH:=${TMPDIR:-/tmp}}"

T_PASSED=0
T_FAILED=0
T_CLEANUP=()

# Run cleanups (newest first) however the scenario ends, so host mode leaves no loop or
# dm devices, mounts or daemons behind.
_t_cleanup() {
    local i
    for ((i = ${#T_CLEANUP[@]} - 1; i >= 0; i--)); do
        eval "${T_CLEANUP[i]}" >/dev/null 2>&1 || echo "# cleanup failed: ${T_CLEANUP[i]}"
    done
    T_CLEANUP=()
}
trap _t_cleanup EXIT

# on_exit CMD...  register a cleanup command (words are quoted for a later eval).
on_exit() {
    local q
    printf -v q '%q ' "$@"
    T_CLEANUP+=("$q")
}

# step DESCRIPTION CMD [ARGS...]  run CMD in this shell (functions may set variables);
# print "ok - DESCRIPTION" or "not ok - DESCRIPTION" plus the command's last output.
# Returns CMD's status.
step() {
    local desc=$1 out rc start
    shift
    out=$(mktemp "$VM_SCRATCH/.step.XXXXXX")
    start=$SECONDS
    "$@" >"$out" 2>&1
    rc=$?
    if ((rc == 0)); then
        T_PASSED=$((T_PASSED + 1))
        echo "ok - $desc ($((SECONDS - start))s)"
        [[ ${VM_VERBOSE:-0} == 1 ]] && sed 's/^/#   /' "$out"
    else
        T_FAILED=$((T_FAILED + 1))
        echo "not ok - $desc (rc=$rc, $((SECONDS - start))s)"
        echo "#   command: $*"
        tail -n 40 "$out" | sed 's/^/#   /'
    fi
    rm -f "$out"
    return "$rc"
}

# must DESCRIPTION CMD...  like step, but a failure ends the scenario (later steps would
# only fail for the same reason).
must() {
    step "$@" && return 0
    echo "# stopping: later steps depend on this one"
    finish
}

# skip DESCRIPTION REASON  record a step that cannot run here (not counted as passed).
skip() {
    echo "ok - $1 # SKIP $2"
}

# note TEXT...  a comment line in the output.
note() {
    echo "# $*"
}

# finish  print the summary line and exit 0 only when no step failed.
# Device scenarios set ID to the snapblk device they created: on failure, finish shows that
# daemon's log (it lives in /run/snapblk/ID.log, outside the run directory).
snapblk_daemon_log() {
    [[ -n ${ID:-} && -f /run/snapblk/$ID.log ]] || return 0
    echo "# daemon log /run/snapblk/$ID.log (last 40 lines):"
    tail -n 40 "/run/snapblk/$ID.log" | sed 's/^/#   /'
}

# snapblk_create ARGS...: `$S create ARGS`, then set DEV and ID from what it prints and delete
# the device when the scenario exits.
snapblk_create() {
    local out
    out=$("$S" create "$@") || { echo "$out"; return 1; }
    echo "create printed: $out"
    DEV=$(tail -n1 <<<"$out")
    ID=${DEV#/dev/ublkb}
    [[ -b $DEV ]] || { echo "$DEV is not a block device"; return 1; }
    on_exit "$S" delete -n "$ID"
}

# snapblk_kill_daemon: SIGKILL the daemon serving device $ID and wait (5 s at most) until it
# is gone; the device stays, for `recover`.
snapblk_kill_daemon() {
    local pid
    pid=$(cat "/run/snapblk/$ID/pid") || return 1
    echo "SIGKILL daemon $pid"
    kill -KILL "$pid" || return 1
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    echo "daemon $pid still alive 5 s after SIGKILL"
    return 1
}

finish() {
    ((T_FAILED > 0)) && snapblk_daemon_log
    echo "$T_PASSED passed, $T_FAILED failed"
    ((T_FAILED == 0)) && exit 0
    exit 1
}

# ---- deterministic data ------------------------------------------------------------

# pattern_gen SEED FIRST_BLOCK COUNT [BS]  print COUNT blocks of BS bytes (default 4096, a
# multiple of 512). Every 512-byte sector starts with a line naming the seed, the block
# and the sector, so data read back from the wrong place, an old snapshot, another seed
# or a torn (partly old) block never matches. One printf per sector: awk is slow under
# emulation (16 MiB takes a few seconds in the VM).
pattern_gen() {
    local seed=$1 first=$2 count=$3 bs=${4:-4096}
    ((bs % 512 == 0)) || { echo "pattern_gen: block size $bs is not a multiple of 512" >&2; return 2; }
    awk -v seed="$seed" -v first="$first" -v count="$count" -v sectors="$((bs / 512))" 'BEGIN {
        fill = sprintf("%447s", ""); gsub(/ /, ".", fill)
        for (b = first; b < first + count; b++)
            for (s = 0; s < sectors; s++)
                printf "%-63s\n%s\n", "snapblk seed=" seed " block=" b " sector=" s, fill
    }'
}

# pattern_write TARGET SEED FIRST_BLOCK COUNT [BS]  write the pattern at block FIRST_BLOCK
# of a file or block device (O_DIRECT for devices, then fsync).
pattern_write() {
    local target=$1 seed=$2 first=$3 count=$4 bs=${5:-4096} flag=
    [[ -b $target ]] && flag=oflag=direct
    pattern_gen "$seed" "$first" "$count" "$bs" |
        dd of="$target" bs="$bs" seek="$first" count="$count" iflag=fullblock conv=notrunc,fsync $flag status=none
}

# region_read TARGET FIRST_BLOCK COUNT [BS]  print those blocks (O_DIRECT for devices).
region_read() {
    local target=$1 first=$2 count=$3 bs=${4:-4096} flag=
    [[ -b $target ]] && flag=iflag=direct
    dd if="$target" bs="$bs" skip="$first" count="$count" $flag status=none
}

# pattern_check TARGET SEED FIRST_BLOCK COUNT [BS]  succeed when the region holds exactly
# that pattern; otherwise name the first differing block.
pattern_check() {
    local target=$1 seed=$2 first=$3 count=$4 bs=${5:-4096} want got
    want=$(pattern_gen "$seed" "$first" "$count" "$bs" | sha256sum | cut -d' ' -f1)
    got=$(region_read "$target" "$first" "$count" "$bs" | sha256sum | cut -d' ' -f1)
    [[ $want == "$got" ]] && return 0
    local b
    for ((b = first; b < first + count; b++)); do
        local diff
        if ! diff=$(cmp <(pattern_gen "$seed" "$b" 1 "$bs") <(region_read "$target" "$b" 1 "$bs") 2>&1); then
            echo "pattern_check: $target block $b (bs $bs) is not seed=$seed: ${diff#* * }"
            echo "pattern_check: the block starts with: $(region_read "$target" "$b" 1 "$bs" | head -c 63 | tr -cd 'A-Za-z0-9=._ -')"
            return 1
        fi
    done
    echo "pattern_check: $target region sha256 $got != expected $want"
    return 1
}

# sha256_of TARGET [FIRST_BLOCK COUNT [BS]]  sha256 of a whole file/device or a region.
sha256_of() {
    if (($# == 1)); then
        local flag=
        [[ -b $1 ]] && flag=iflag=direct
        dd if="$1" bs=1M $flag status=none | sha256sum | cut -d' ' -f1
    else
        region_read "$@" | sha256sum | cut -d' ' -f1
    fi
}

# expect_eq WHAT GOT WANT  succeed when equal, otherwise say what differed.
expect_eq() {
    [[ $2 == "$3" ]] && return 0
    echo "$1: got '$2', want '$3'"
    return 1
}

# ---- devices -----------------------------------------------------------------------

# wait_for PATH [SECONDS]  wait (bounded, default 10 s) until PATH exists.
wait_for() {
    local path=$1 limit=${2:-10} i
    for ((i = 0; i < limit * 10; i++)); do
        [[ -e $path ]] && return 0
        sleep 0.1
    done
    echo "wait_for: $path did not appear within ${limit}s"
    return 1
}

# loop_attach VAR FILE  attach FILE to a loop device with direct I/O (util-linux losetup:
# busybox's has no --direct-io), store the device in VAR, detach on exit.
loop_attach() {
    local __var=$1 file=$2 dev
    dev=$(/usr/sbin/losetup --find --show --direct-io=on "$file") || return 1
    on_exit /usr/sbin/losetup -d "$dev"
    printf -v "$__var" '%s' "$dev"
}

# dm_create NAME TABLE  create a device-mapper device and its /dev/mapper node (no udev
# here, so no udev sync and an explicit mknodes), remove it on exit.
dm_create() {
    local name=$1 table=$2
    dmsetup create "$name" --noudevsync --table "$table" || return 1
    on_exit dm_remove "$name"
    dmsetup mknodes "$name" && wait_for "/dev/mapper/$name" 5
}

# dm_remove NAME  remove a device-mapper device if it exists.
dm_remove() {
    dmsetup info "$1" >/dev/null 2>&1 || return 0
    dmsetup remove --noudevsync "$1" && dmsetup mknodes
}

# mount_at DEV DIR [MOUNT ARGS...]  mount and unmount on exit.
mount_at() {
    local dev=$1 dir=$2
    shift 2
    mkdir -p "$dir" && mount "$@" "$dev" "$dir" || return 1
    on_exit umount_if_mounted "$dir"
}

# sums_after_restore DEV DIR FSTYPE SUMS GONE  mount DEV at DIR, check every sha256 in SUMS
# (paths relative to DIR) and that DIR/GONE does not exist, umount.
sums_after_restore() {
    local dev=$1 dir=$2 fstype=$3 sums=$4 gone=$5 rc
    mount -t "$fstype" "$dev" "$dir" || return 1
    (cd "$dir" && sha256sum -c "$sums") && [[ ! -e $dir/$gone ]]
    rc=$?
    umount "$dir"
    return $rc
}

# umount_if_mounted DIR
umount_if_mounted() {
    if mountpoint -q "$1"; then umount "$1"; fi
}

# fails_with NEEDLE CMD...  CMD must fail, with NEEDLE in a one-line stderr (kept in $ERR,
# default $VM_SCRATCH/fails_with.err).
fails_with() {
    local needle=$1 err=${ERR:-$VM_SCRATCH/fails_with.err}
    shift
    if "$@" >/dev/null 2>"$err"; then
        echo "unexpected success: $*"
        return 1
    fi
    cat "$err"
    grep -qF -- "$needle" "$err" || { echo "stderr lacks: $needle"; return 1; }
    (($(wc -l <"$err") == 1)) || { echo "error is not one line"; return 1; }
}

# snapblk_has COMMAND  succeed when the built snapblk knows COMMAND.
snapblk_has() {
    [[ -n ${SNAPBLK_BIN:-} && -x $SNAPBLK_BIN ]] || return 1
    "$SNAPBLK_BIN" "$1" --help >/dev/null 2>&1
}
