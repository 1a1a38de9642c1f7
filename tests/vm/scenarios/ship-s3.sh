#!/usr/bin/env bash
# Shipping from a running device to a real S3 server (Garage, started in the guest on its
# loopback): the CLI hands the credentials from its environment to the daemon over the
# control socket, `ship --once` commits a point that `remote restore` rebuilds byte-exact;
# wrong credentials fail visibly and commit nothing; a continuous schedule keeps its
# credentials across SIGKILL + `recover` and goes on shipping.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ -n ${SNAPBLK_BIN:-} ]] || { skip "ship-s3" "no snapblk binary"; finish; }
S=$SNAPBLK_BIN
img=$VM_SCRATCH/s3-disk.img
gdir=$VM_SCRATCH/garage
DEV= ID=

must "garage is in the guest (host: scripts/garage.sh ensure)" command -v garage
lo_up() { ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up; }
must "loopback up" lo_up
must "start Garage on the guest's loopback" bash "$SNAPBLK_REPO/shipper/tests/garage.sh" start "$gdir"
on_exit bash "$SNAPBLK_REPO/shipper/tests/garage.sh" stop "$gdir"
# shellcheck disable=SC1091  # written by garage.sh start
source "$gdir/env"
URL=s3://$SNAPBLK_TEST_BUCKET/vm-$RANDOM
note "S3 endpoint $AWS_ENDPOINT_URL, url $URL"

create_dev() { snapblk_create --backing "$img" --size 64M; }
must "create a 64M device" create_dev
must "pattern over the whole device" pattern_write "$DEV" s3a 0 16384
must "snapshot create s1" "$S" snapshot create s1 -n "$ID"

points() { "$S" remote list --from "$URL" | grep -cE '^ *[0-9]+ '; }

ship_once() {
    local out
    out=$("$S" ship -n "$ID" --to "$URL" --once --json) || { echo "$out"; return 1; }
    echo "$out"
    grep -q '"committed": *true' <<<"$out"
}
step "ship --once to S3 with credentials from the environment commits a point" ship_once
step "the daemon's log and status carry no secret" \
    bash -c "! grep -F '$AWS_SECRET_ACCESS_KEY' /run/snapblk/$ID.log && ! '$S' status -n $ID --json | grep -F '$AWS_SECRET_ACCESS_KEY'"

same_as_export() {
    "$S" export s1 -n "$ID" --to "$VM_SCRATCH/s1.img" || return 1
    "$S" remote restore --from "$URL" --point latest --to "$VM_SCRATCH/r1.img" || return 1
    cmp "$VM_SCRATCH/s1.img" "$VM_SCRATCH/r1.img" && rm -f "$VM_SCRATCH/s1.img" "$VM_SCRATCH/r1.img"
}
step "remote restore from S3 equals export of the shipped image" same_as_export

bad_creds() {
    local before out rc
    before=$(points) || return 1
    "$S" snapshot create s2 -n "$ID" || return 1
    out=$(AWS_SECRET_ACCESS_KEY=0000000000000000000000000000000000000000000000000000000000000000 \
        "$S" ship -n "$ID" --to "$URL" --once 2>&1)
    rc=$?
    echo "exit $rc: $out"
    ((rc != 0)) || { echo "a ship with a wrong secret key succeeded"; return 1; }
    grep -qiE 'credential|signature|403|access denied|forbidden' <<<"$out" || { echo "the error does not say why"; return 1; }
    (($(points) == before)) || { echo "a point was committed"; return 1; }
}
step "a wrong secret key fails with a clear error and commits nothing" bad_creds

continuous_survives() {
    local before after
    "$S" ship -n "$ID" --to "$URL" --interval 1s || return 1
    pattern_write "$DEV" s3b 1024 256 || return 1
    sleep 3
    before=$(points) || return 1
    snapblk_kill_daemon || return 1
    # The new daemon has only the saved schedule's credentials: none in this call.
    env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "$S" recover -n "$ID" || return 1
    "$S" status -n "$ID" | grep -E "^ship +$URL running" || { echo "schedule not resumed"; return 1; }
    pattern_write "$DEV" s3c 2048 256 || return 1
    for _ in $(seq 30); do
        after=$(points)
        ((after > before)) && break
        sleep 1
    done
    echo "points: $before before the crash, $after after"
    ((after > before)) || { echo "no point shipped after recovery"; return 1; }
    "$S" ship -n "$ID" --to "$URL" --stop
}
step "continuous shipping to S3 survives SIGKILL + recover with its saved credentials" continuous_survives
step "remote verify: every S3 point restorable" "$S" remote verify --from "$URL"

must "snapblk delete" "$S" delete -n "$ID"
finish
