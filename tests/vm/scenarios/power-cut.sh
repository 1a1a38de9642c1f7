#!/usr/bin/env bash
# Power cuts through the real ublk path (issue 24). Origin and store sit on ONE dm-log-writes
# device, split in two with dm-linear, so that one log orders every write of both. A real
# workload runs through /dev/ublkbN with 2 queues: ext4 with fsync-ing writers, fio with
# verify, snapshots created and deleted during it, then, unmounted, a restore. The log is
# then replayed onto a scratch image up to FLUSH records (a power cut right after that
# flush) and up to points between flushes with a random half of the unflushed writes
# dropped (a volatile cache losing part of itself). At each point: the store opens
# (replaying its journal), `snapblk check` is clean, every snapshot it lists exports equal
# to the image recorded when it was created, every snapshot that must exist does and none
# that was deleted does, every file acknowledged by a completed fsync before the point
# reads back, and after a completed restore the live image is the restored snapshot.
#
# Env: POWERCUT_POINTS (flush points checked, default 10), POWERCUT_SUBSETS (between-flush
# points with dropped writes, default 4), POWERCUT_SEED (default 1), POWERCUT_FULL=1 (every
# flush point and one dropped-writes point per flush interval: hours under emulation).
# Method: tests/vm/README.md, "Power cuts".
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -n ${SNAPBLK_BIN:-} ]] || { skip "power-cut" "no snapblk binary"; finish; }
# Built with the workspace; a missing replayer fails the scenario rather than skipping it.
must "the log replayer is in the guest (cargo build --release -p snapblk-tests)" command -v snapblk-replay-log
REPLAY=$(command -v snapblk-replay-log)
S=$SNAPBLK_BIN
W=$VM_SCRATCH/pc
mkdir -p "$W/rec"
REC=$W/rec
ORIGIN_MB=64 STORE_MB=64
OSECT=$((ORIGIN_MB * 2048)) SSECT=$((STORE_MB * 2048))
TOTAL=$((OSECT + SSECT))
mnt=$W/mnt
DEV= ID=
POINTS=${POWERCUT_POINTS:-10}
SUBSETS=${POWERCUT_SUBSETS:-4}
SEED=${POWERCUT_SEED:-1}

mark() { dmsetup message pc-lw 0 mark "$1"; }

setup() {
    truncate -s $((ORIGIN_MB + STORE_MB))M "$W/data.img" && truncate -s 700M "$W/log.img" || return 1
    loop_attach LDATA "$W/data.img" && loop_attach LLOG "$W/log.img" || return 1
    dm_create pc-lw "0 $TOTAL log-writes $LDATA $LLOG" || return 1
    dm_create pc-origin "0 $OSECT linear /dev/mapper/pc-lw 0" || return 1
    dm_create pc-store "0 $SSECT linear /dev/mapper/pc-lw $OSECT" || return 1
    mark start
}
must "origin and store on one dm-log-writes device, split by dm-linear" setup

create_dev() {
    snapblk_create --backing /dev/mapper/pc-origin --store /dev/mapper/pc-store --queues 2 --block-size 4K
}
must "create over them (store on a blank block device, 2 queues)" create_dev

# record_snapshot NAME: remember the sha256 of snapshot NAME's image, taken right after
# its creation (a snapshot never changes afterwards).
record_snapshot() {
    "$S" export "$1" -n "$ID" --to "$W/exp.img" || return 1
    sha256sum <"$W/exp.img" | cut -d' ' -f1 >"$REC/snap-$1.sha" && rm -f "$W/exp.img"
}

snapshot() {
    "$S" snapshot create "$1" -n "$ID" || return 1
    mark "snap-$1" && record_snapshot "$1"
}

# writer TAG N: N files written and fsync'd one by one; after each fsync returns, a mark
# fsync-TAG-K and the file's sha256.
writer() {
    local k f
    for ((k = 1; k <= $2; k++)); do
        f=$mnt/$1-$k.bin
        pattern_gen "$1$k" 0 $((16 + k * 8)) | dd of="$f" bs=64k conv=fsync status=none || return 1
        mark "fsync-$1-$k" || return 1
        sha256sum <"$f" | cut -d' ' -f1 >"$REC/fsync-$1-$k.sha"
    done
}

fs_phase() {
    mkfs.ext4 -q -F "$DEV" && mount_at "$DEV" "$mnt" -t ext4 && sync || return 1
    mark fs-ready
    writer a 6 & local pa=$!
    writer b 6 & local pb=$!
    snapshot s1 || return 1
    wait $pa && wait $pb || return 1
    snapshot s2 || return 1
    writer c 4 & pa=$!
    mark delstart-s1 && "$S" snapshot delete s1 -n "$ID" && mark del-s1 || return 1
    wait $pa || return 1
    fio --name=v --directory="$mnt" --rw=randwrite --bs=4k --size=8M --ioengine=psync \
        --verify=crc32c --verify_fatal=1 --fsync_on_close=1 --randseed=7 --output="$W/fio.out" || {
        cat "$W/fio.out"
        return 1
    }
    mark fsync-fio
    sha256sum <"$mnt/v.0.0" | cut -d' ' -f1 >"$REC/fsync-fio.sha"
    snapshot s3
}
must "ext4: fsync-ing writers, snapshots created and deleted, fio with verify" fs_phase

restore_phase() {
    umount "$mnt" || return 1
    mark restore-start
    "$S" restore s2 -n "$ID" || return 1
    mark restore-done
    cp "$REC/snap-s2.sha" "$REC/restored.sha"
    # The pre-restore snapshot the restore took: recorded like the others.
    local n
    for n in $("$S" status -n "$ID" --json | grep -o '"name": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/'); do
        [[ -f $REC/snap-$n.sha ]] || { echo "recording $n" && record_snapshot "$n"; } || return 1
    done
}
must "unmounted: restore s2" restore_phase

teardown_log() {
    "$S" delete -n "$ID" || return 1
    dm_remove pc-origin && dm_remove pc-store && dm_remove pc-lw
}
must "stop the device; remove the log device (the log is complete)" teardown_log

"$REPLAY" list "$LLOG" >"$W/entries" || { step "list the log" false; finish; }
note "log: $(wc -l <"$W/entries") entries, $(grep -c ' F' "$W/entries") flushes, $(grep -c ' M ' "$W/entries") marks"
mark_at() { awk -v m="$1" '$2 ~ /M/ && $5 == m { print $1; exit }' "$W/entries"; }
RESTORE_START=$(mark_at restore-start)
RESTORE_DONE=$(mark_at restore-done)
FS_READY=$(mark_at fs-ready)

truncate -s $((ORIGIN_MB + STORE_MB))M "$W/rep.img"
loop_attach REP "$W/rep.img"

# chk_up / chk_down: the replayed image behind a throw-away dm-snapshot, split again, so
# that opening the store (journal replay, --adopt) and mounting ext4 (its own journal
# replay) write to the snapshot's COW and never to the image the replay goes on from.
chk_up() {
    blockdev --flushbufs "$REP" || return 1
    truncate -s 32M "$W/cow.img" && COW=$(/usr/sbin/losetup --find --show "$W/cow.img") || return 1
    dm_up pc-chk "0 $TOTAL snapshot $REP $COW N 8" &&
        dm_up pc-chk-o "0 $OSECT linear /dev/mapper/pc-chk 0" &&
        dm_up pc-chk-s "0 $SSECT linear /dev/mapper/pc-chk $OSECT"
}
# dm_up NAME TABLE: like dm_create, but removed by chk_down rather than at exit.
dm_up() {
    dmsetup create "$1" --noudevsync --table "$2" && dmsetup mknodes "$1" && wait_for "/dev/mapper/$1" 5
}
chk_down() {
    umount_if_mounted "$mnt"
    local d
    for d in pc-chk-o pc-chk-s pc-chk; do dm_remove "$d"; done
    [[ -n ${COW:-} ]] && /usr/sbin/losetup -d "$COW"
    COW=
    rm -f "$W/cow.img"
}
on_exit chk_down

# marks_before P PREFIX: names of marks PREFIX* at entry indexes below P.
marks_before() { awk -v p="$1" -v pre="$2" '$2 ~ /M/ && $1 < p && index($5, pre) == 1 { print $5 }' "$W/entries"; }
before() { [[ -n $2 && $2 -lt $1 ]]; }

# check_point P: every invariant at a power cut whose surviving writes are in the image.
check_point() {
    local rc=0
    check_point_at "$1" || rc=$?
    chk_down
    return $rc
}
check_point_at() {
    local p=$1 O=/dev/mapper/pc-chk-o St=/dev/mapper/pc-chk-s n m bad=0 listed sha
    chk_up || return 1
    "$S" status --backing "$O" --store "$St" --adopt --json >"$W/st.json" || { echo "the store does not open"; return 1; }
    "$S" check --backing "$O" --store "$St" --adopt >"$W/check.out" || { cat "$W/check.out"; return 1; }
    listed=$(grep -o '"name": *"[^"]*"' "$W/st.json" | sed 's/.*"\([^"]*\)"$/\1/')
    for n in $listed; do
        [[ -f $REC/snap-$n.sha ]] || { echo "unknown snapshot $n"; bad=1; continue; }
        if before "$p" "$(mark_at "del-$n")"; then echo "deleted snapshot $n is back"; bad=1; fi
        "$S" export "$n" --backing "$O" --store "$St" --adopt --to "$W/exp.img" || { bad=1; continue; }
        sha=$(sha256sum <"$W/exp.img" | cut -d' ' -f1)
        rm -f "$W/exp.img"
        [[ $sha == "$(cat "$REC/snap-$n.sha")" ]] || { echo "snapshot $n differs from its image at creation"; bad=1; }
    done
    for m in $(marks_before "$p" snap-); do
        n=${m#snap-}
        before "$p" "$(mark_at "delstart-$n")" && continue
        grep -qx "$n" <<<"$listed" || { echo "snapshot $n (created before the cut) is missing"; bad=1; }
    done
    if before "$p" "$FS_READY" && ! before "$p" "$RESTORE_START"; then
        mkdir -p "$mnt" && mount -t ext4 "$O" "$mnt" || { echo "ext4 does not mount"; return 1; }
        for m in $(marks_before "$p" fsync-); do
            case $m in
            fsync-fio) n=$mnt/v.0.0 ;;
            *) n=$mnt/${m#fsync-}.bin ;;
            esac
            sha=$(sha256sum <"$n" | cut -d' ' -f1) || { bad=1; continue; }
            [[ $sha == "$(cat "$REC/$m.sha")" ]] || { echo "$m: the fsync'd file differs"; bad=1; }
        done
        umount "$mnt"
    fi
    if before "$p" "$RESTORE_DONE"; then
        sha=$(head -c $((ORIGIN_MB << 20)) "$O" | sha256sum | cut -d' ' -f1)
        [[ $sha == "$(cat "$REC/restored.sha")" ]] || { echo "the live image is not the restored snapshot"; bad=1; }
    fi
    ((bad == 0))
}

# Which points: POINTS flush records spread evenly over the log (always the last one), and
# SUBSETS flush intervals, each replayed to its end with a random half of its writes lost.
mapfile -t FLUSHES < <(awk '$2 ~ /F/ { print $1 }' "$W/entries")
nf=${#FLUSHES[@]}
declare -A AT_FLUSH=() SUBSET=()
if [[ ${POWERCUT_FULL:-0} == 1 ]]; then
    for ((i = 0; i < nf; i++)); do AT_FLUSH[$i]=1 SUBSET[$i]=1; done
else
    for ((k = 1; k <= POINTS; k++)); do AT_FLUSH[$(((nf - 1) * k / POINTS))]=1; done
    RANDOM=$SEED
    for ((k = 0; k < SUBSETS; k++)); do SUBSET[$((RANDOM % (nf - 1)))]=1; done
fi
note "checking ${#AT_FLUSH[@]} flush points and ${#SUBSET[@]} dropped-writes points of $nf flushes"

cur=0 checked=0
for ((i = 0; i < nf; i++)); do
    f=${FLUSHES[$i]}
    [[ -n ${AT_FLUSH[$i]:-} || -n ${SUBSET[$i]:-} ]] || continue
    "$REPLAY" replay "$LLOG" "$REP" "$cur" $((f + 1)) >/dev/null || { step "replay to entry $f" false; break; }
    cur=$((f + 1))
    if [[ -n ${AT_FLUSH[$i]:-} ]]; then
        step "power cut after flush $i (entry $f)" check_point "$cur"
        checked=$((checked + 1))
    fi
    if [[ -n ${SUBSET[$i]:-} ]] && ((i + 1 < nf)); then
        next=${FLUSHES[$((i + 1))]}
        out=$("$REPLAY" replay "$LLOG" "$REP" "$cur" "$next" --drop-seed $((SEED * 1000 + i)) --undo "$W/undo") || { step "subset replay" false; break; }
        step "power cut before flush $((i + 1)) (entries $cur..$next, $out)" check_point "$next"
        checked=$((checked + 1))
        "$REPLAY" undo "$REP" "$W/undo" || { step "undo the subset replay" false; break; }
    fi
done
note "power cut points checked: $checked"
step "at least $((POINTS / 2)) points were checked" test "$checked" -ge $((POINTS / 2))

finish
