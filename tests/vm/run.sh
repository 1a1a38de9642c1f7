#!/usr/bin/env bash
# Run VM end-to-end scenarios: tests/vm/run.sh [SCENARIO...]
#
# SCENARIO is a name in tests/vm/scenarios/ (smoke, smoke.sh) or a path to a script under
# tests/vm/ (selftest/timeout.sh, tests/vm/selftest/timeout.sh). No argument: every scenarios/*.sh
# except lib.sh. Each scenario gets its own fresh VM boot (one initramfs built per run).
# The console streams to the terminal and to target/vm-logs/NAME.log.
#
# Host mode: when /dev/ublk-control exists here (a kernel with ublk) the scenarios run
# directly on this machine with bash, as root; VM_FORCE=1 boots the VM anyway, VM_HOST=1
# forces host mode (harness testing).
#
# Env: VM_TIMEOUT (s, default 900)  VM_MEM (MiB, 3072)  VM_CPUS (2)  VM_TMP_SIZE (1G)
#      VM_EXTRA_BINS  VM_EXTRA_MODULES  VM_GUEST_ENV ("NAME=value ...")  VM_QEMU_ARGS
#      VM_OUT_SIZE (256M)  VM_HUNG_TASK_SECS (120, 0 = off)  VM_FORCE=1  VM_HOST=1  SNAPBLK_BIN
# Files a scenario writes to $VM_OUT end up in target/vm-out/NAME/.
# Exit: 0 all passed; otherwise the failing scenario's status, or 124 timeout,
#       125 kernel oops/panic/BUG/hung task, 126 no end marker (VM died or init broke).
set -euo pipefail
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

VM_TIMEOUT=${VM_TIMEOUT:-900}
VM_MEM=${VM_MEM:-3072}
VM_CPUS=${VM_CPUS:-2}
VM_TMP_SIZE=${VM_TMP_SIZE:-1G}
VM_HUNG_TASK_SECS=${VM_HUNG_TASK_SECS:-120}
[[ $VM_HUNG_TASK_SECS =~ ^[0-9]+$ ]] || vm_die "VM_HUNG_TASK_SECS=$VM_HUNG_TASK_SECS is not a number of seconds (0 = off)"
[[ $VM_TIMEOUT =~ ^[0-9]+$ && $VM_TIMEOUT -gt 0 ]] || vm_die "VM_TIMEOUT=$VM_TIMEOUT is not a positive number of seconds"

# Kernel lines (they carry a printk timestamp) that mean the kernel itself went wrong.
KERNEL_FAIL_RE='\[ *[0-9]+\.[0-9]+\] .*(Kernel panic - not syncing|BUG:|Oops|general protection fault|kernel BUG at|WARNING: CPU:|blocked for more than [0-9]+ seconds|Call Trace:)'

case ${1:-} in -h | --help)
    sed -n '2,19s/^# \{0,1\}//p' "$0"
    exit 0
    ;;
esac

# Turn an argument into a path relative to tests/vm.
resolve_scenario() {
    local arg=$1 abs
    for abs in "$VM_DIR/scenarios/$arg" "$VM_DIR/scenarios/$arg.sh" "$VM_DIR/$arg" "$arg" "$REPO_ROOT/$arg"; do
        if [[ -f $abs ]]; then
            abs=$(realpath "$abs")
            [[ $abs == "$VM_DIR"/* ]] || vm_die "scenario $arg must live under tests/vm/ (the guest gets a copy of that directory)"
            echo "${abs#"$VM_DIR"/}"
            return 0
        fi
    done
    vm_die "no scenario '$arg' (looked in tests/vm/scenarios/ and as a path)"
}

scenarios=()
if (($# == 0)); then
    for f in "$VM_DIR"/scenarios/*.sh; do
        [[ $(basename "$f") == lib.sh ]] || scenarios+=("scenarios/$(basename "$f")")
    done
else
    for a in "$@"; do scenarios+=("$(resolve_scenario "$a")"); done
fi

host_mode=0
if [[ -z ${VM_FORCE:-} ]] && [[ -e /dev/ublk-control || ${VM_HOST:-} == 1 ]]; then
    host_mode=1
    ((EUID == 0)) || vm_die "host mode (ublk on this machine) needs root: rerun with sudo, or VM_FORCE=1 for the VM"
fi

mkdir -p "$VM_LOGS"
child='' host_scratch=''
# kill_child SIGNAL: the VM's qemu, or in host mode the scenario's whole process group
# (it may have started daemons).
kill_child() {
    [[ -n $child ]] || return 0
    if ((host_mode)); then
        kill "-$1" -- "-$child" 2>/dev/null || true
    else
        kill "-$1" "$child" 2>/dev/null || true
    fi
}
trap 'kill_child TERM; exit 130' INT TERM
# Never leave a VM (or a host-mode process group) behind, however this script ends.
trap 'kill_child KILL' EXIT

if ((host_mode)); then
    vm_log "host mode ($([[ -e /dev/ublk-control ]] && echo "/dev/ublk-control exists" || echo VM_HOST=1)): running scenarios here, VM_FORCE=1 boots the VM"
else
    "$REPO_ROOT/scripts/deps.sh" --vm-packages
    "$VM_DIR/fetch-kernel.sh"
    initramfs=$VM_BUILD/initramfs.cpio
    "$VM_DIR/build-initramfs.sh" "$initramfs"
fi

# Start scenario $1 in the background with its output going to log $2; sets $child to a
# PID whose process group (host mode) or process (VM) is ours to kill.
start_scenario() {
    local rel=$1 log=$2 out=$3
    if ((host_mode)); then
        local path=$PATH bin
        host_scratch=$(mktemp -d "${TMPDIR:-/tmp}/snapblk-vm-scratch.XXXXXX")
        for bin in ${VM_EXTRA_BINS:-}; do path=$(dirname "$(realpath "$bin")"):$path; done
        local snapblk=${SNAPBLK_BIN:-$REPO_ROOT/target/release/snapblk}
        [[ -x $snapblk ]] || snapblk=
        # setsid: the scenario and any daemon it starts form one group we can stop.
        # shellcheck disable=SC2086,SC2016  # word lists on purpose; $0/$rc are the inner bash's
        env PATH="$path" SNAPBLK_REPO="$REPO_ROOT" SNAPBLK_VM_GUEST=0 VM_SCRATCH="$host_scratch" VM_OUT="$out" \
            ${snapblk:+SNAPBLK_BIN="$snapblk"} ${VM_GUEST_ENV:-} \
            setsid bash -c 'cd "$VM_SCRATCH" && bash "$0"; rc=$?; echo "SNAPBLK-VM-RESULT rc=$rc"; exit $rc' \
            "$VM_DIR/$rel" </dev/null >"$log" 2>&1 &
        child=$!
    else
        rm -f "$out.disk"
        truncate -s "${VM_OUT_SIZE:-256M}" "$out.disk"
        local kernel_args="console=ttyS0 loglevel=5 panic=-1 oops=panic nowatchdog edd=off"
        kernel_args+=" snapblk.scenario=$rel snapblk.tmp=$VM_TMP_SIZE snapblk.hung=$VM_HUNG_TASK_SECS"
        # The guest stops the scenario itself 60 s before the host would kill the VM (room
        # for a slow boot and the bounded final sync), so it can still list the stuck tasks
        # and their kernel stacks.
        kernel_args+=" snapblk.timeout=$((VM_TIMEOUT > 120 ? VM_TIMEOUT - 60 : 0))"
        # TCG, not KVM: nested KVM fails here. -cx16: TCG's cmpxchg16b corrupts the
        # guest under I/O load (see /work/shared/VM.md).
        # shellcheck disable=SC2086
        qemu-system-x86_64 -accel tcg -cpu qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,-cx16 \
            -m "$VM_MEM" -smp "$VM_CPUS" -nodefaults -display none -serial stdio -no-reboot \
            -kernel "$VM_KERNEL_DIR/bzImage" -initrd "$initramfs" -append "$kernel_args" \
            -drive "file=$out.disk,format=raw,if=virtio" \
            ${VM_QEMU_ARGS:-} </dev/null >"$log" 2>&1 &
        child=$!
    fi
}

# Run one scenario; prints the verdict, returns its exit status.
run_one() {
    local rel=$1 name log out start elapsed timed_out=0 rc tailer
    name=${rel%.sh}
    name=${name#scenarios/}
    name=${name//\//_}
    log=$VM_LOGS/$name.log
    last_log=$log
    out=$VM_OUT_ROOT/$name
    rm -rf "$out"
    mkdir -p "$out"
    vm_log "=== $rel (log $log, timeout ${VM_TIMEOUT}s) ==="
    start=$SECONDS
    : >"$log"
    start_scenario "$rel" "$log" "$out"
    tail -n +1 -f --pid="$child" "$log" &
    tailer=$!
    while kill -0 "$child" 2>/dev/null; do
        if ((SECONDS - start >= VM_TIMEOUT)); then
            timed_out=1
            kill_child TERM
            for _ in 1 2 3 4 5 6 7 8 9 10; do
                kill -0 "$child" 2>/dev/null || break
                sleep 1
            done
            kill_child KILL
            break
        fi
        sleep 1
    done
    wait "$child" 2>/dev/null || true
    child=
    wait "$tailer" 2>/dev/null || true
    elapsed=$((SECONDS - start))
    if [[ -n $host_scratch ]]; then
        rm -rf "$host_scratch"
        host_scratch=
    fi
    if [[ -f $out.disk ]]; then
        # An empty disk is not a tar archive: the scenario left nothing in VM_OUT.
        tar -xf "$out.disk" -C "$out" 2>/dev/null || true
        rm -f "$out.disk"
    fi
    if ! rmdir "$out" 2>/dev/null; then
        vm_log "files from VM_OUT: $out"
    fi

    local marker kernel_fail reason=
    marker=$(grep -a 'SNAPBLK-VM-RESULT rc=' "$log" | tail -n1 | tr -d '\r' | sed -n 's/.*SNAPBLK-VM-RESULT rc=\([0-9]*\).*/\1/p')
    kernel_fail=$(grep -aE -m1 "$KERNEL_FAIL_RE" "$log" | tr -d '\r' || true)
    if [[ -n $kernel_fail ]]; then
        if [[ $kernel_fail == *"blocked for more than"* ]]; then
            reason="kernel hung task: $kernel_fail"
        else
            reason="kernel oops/panic/BUG: $kernel_fail"
        fi
        rc=125
    elif grep -aq 'vm-init: scenario timed out' "$log"; then
        reason="timeout: the guest stopped the scenario after $((VM_TIMEOUT - 60))s (VM_TIMEOUT=$VM_TIMEOUT minus 60); tasks left are listed above"
        rc=124
    elif ((timed_out)); then
        reason="timeout: no end marker after ${VM_TIMEOUT}s (VM_TIMEOUT)"
        rc=124
    elif [[ -z $marker ]]; then
        reason="no 'SNAPBLK-VM-RESULT' end marker: the VM stopped before the scenario finished"
        rc=126
    elif ((marker != 0)); then
        reason="scenario exited with rc=$marker"
        rc=$marker
    else
        rc=0
    fi
    if ((rc == 0)); then
        vm_log "PASS $rel (${elapsed}s)"
    else
        echo "---- console tail: last 60 lines of $log ----" >&2
        tail -n 60 "$log" | tr -d '\r' >&2
        echo "---- end of console tail ----" >&2
        vm_log "FAIL $rel (${elapsed}s): $reason"
    fi
    return "$rc"
}

# True when the guest kernel failed before the scenario started (an oops line before the
# SNAPBLK-VM-START line, or no start line at all). Under TCG the kernel has been seen, about
# once in 40 boots, to oops in its idle loop while patching its own text; that says nothing
# about snapblk, so such a boot is retried once. A failure after the start line never is.
failed_during_boot() {
    local log=$1 fail_line start_line
    ((host_mode == 0)) || return 1
    fail_line=$(grep -anE -m1 "$KERNEL_FAIL_RE" "$log" | cut -d: -f1 || true)
    [[ -n $fail_line ]] || return 1
    start_line=$(grep -an -m1 'SNAPBLK-VM-START' "$log" | cut -d: -f1 || true)
    [[ -z $start_line ]] || ((fail_line < start_line))
}

# True when the guest kernel's first failure is an "Oops: int3": a breakpoint trap in kernel
# text. The kernel patches its own code (static keys, alternatives) by planting int3, writing
# the new bytes and removing int3; the trap handler finds a breakpoint that is no longer
# there only when the CPU ran stale code, which is qemu TCG missing the kernel's
# self-modification. Seen once at a nop in get_random_u32 under fallocate on tmpfs, a few
# seconds into device-fio, before snapblk had done anything. No snapblk or ublk bug makes the
# kernel trap at its own patch sites, so such a run is retried once, whenever it happened.
failed_on_stale_patch() {
    local log=$1
    ((host_mode == 0)) || return 1
    grep -aE -m1 "$KERNEL_FAIL_RE" "$log" | grep -q 'Oops: int3'
}

# One scenario, retried once if only the boot failed, or the emulator ran stale kernel code.
run_scenario() {
    local rel=$1 rc=0 why=
    run_one "$rel" || rc=$?
    if ((rc == 125)); then
        if failed_during_boot "$last_log"; then
            why="the guest kernel failed while booting, before the scenario started"
        elif failed_on_stale_patch "$last_log"; then
            why="the guest kernel trapped on one of its own patch sites (Oops: int3, an emulation fault)"
        fi
    fi
    if [[ -n $why ]]; then
        cp "$last_log" "$last_log.kernel-failure"
        vm_log "RETRY $rel: $why (console kept in $last_log.kernel-failure)"
        rc=0
        run_one "$rel" || rc=$?
    fi
    return "$rc"
}

last_log=
final=0 passed=0 failed=()
for rel in "${scenarios[@]}"; do
    if run_scenario "$rel"; then
        passed=$((passed + 1))
    else
        final=$?
        failed+=("$rel")
    fi
done
if ((${#scenarios[@]} > 1)); then
    vm_log "scenarios ok: $passed of ${#scenarios[@]}${failed:+; failing: ${failed[*]}}"
fi
exit "$final"
