#!/usr/bin/env bash
# Start/stop a throw-away single-node Garage S3 server on free loopback ports.
#
#   shipper/tests/garage.sh install        # idempotent: cargo install garage 2.5.0 unless present
#   shipper/tests/garage.sh start DIR      # starts it; writes DIR/env (source it) and DIR/pid
#   shipper/tests/garage.sh stop DIR       # stops the server started in DIR (by its PID)
#
# DIR/env exports AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
# and SNAPBLK_TEST_BUCKET; the secret is only ever written to that 0600 file.
set -euo pipefail

GARAGE_VERSION=2.5.0
REGION=garage
BUCKET=snapblk-test

garage_bin() {
  if [[ -n "${GARAGE_BIN:-}" ]]; then echo "$GARAGE_BIN"; return; fi
  if command -v garage >/dev/null 2>&1; then command -v garage; return; fi
  if [[ -x "$HOME/.cargo/bin/garage" ]]; then echo "$HOME/.cargo/bin/garage"; return; fi
  return 1
}

free_port() {
  local p tries=0
  while (( tries < 200 )); do
    p=$(( 20000 + RANDOM % 40000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    tries=$(( tries + 1 ))
  done
  echo "no free loopback port found" >&2; return 1
}

hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

cmd=${1:-}
case "$cmd" in
  install)
    if bin=$(garage_bin) && "$bin" --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
      echo "garage $GARAGE_VERSION already installed at $bin"
    else
      cargo install garage --version "$GARAGE_VERSION" --locked
    fi
    ;;
  start)
    dir=${2:?usage: garage.sh start DIR}
    bin=$(garage_bin) || { echo "garage not installed: run '$0 install'" >&2; exit 2; }
    mkdir -p "$dir"; dir=$(cd "$dir" && pwd)
    rpc=$(free_port); s3=$(free_port)
    ak="GK$(hex 12)"; sk="$(hex 32)"
    cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(hex 32)"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$s3"
TOML
    chmod 600 "$dir/garage.toml"
    GARAGE_DEFAULT_ACCESS_KEY="$ak" GARAGE_DEFAULT_SECRET_KEY="$sk" GARAGE_DEFAULT_BUCKET="$BUCKET" \
      RUST_LOG=garage=warn nohup "$bin" -c "$dir/garage.toml" server --single-node --default-bucket \
      >"$dir/garage.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    ( umask 077; cat >"$dir/env" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3
export AWS_REGION=$REGION
export AWS_ACCESS_KEY_ID=$ak
export AWS_SECRET_ACCESS_KEY=$sk
export SNAPBLK_TEST_BUCKET=$BUCKET
ENV
    )
    for _ in $(seq 1 150); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$s3") 2>/dev/null; then
        sleep 0.5  # the default bucket/key are created right after the listener opens
        echo "garage up: endpoint http://127.0.0.1:$s3 bucket $BUCKET (source $dir/env)"
        exit 0
      fi
      if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then break; fi
      sleep 0.2
    done
    echo "garage failed to start; log:" >&2; cat "$dir/garage.log" >&2; exit 1
    ;;
  stop)
    dir=${2:?usage: garage.sh stop DIR}
    [[ -f "$dir/pid" ]] || { echo "no $dir/pid"; exit 0; }
    pid=$(cat "$dir/pid")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pid"
    ;;
  *)
    echo "usage: $0 install | start DIR | stop DIR" >&2; exit 2 ;;
esac
