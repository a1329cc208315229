#!/usr/bin/env bash
# Adapter that plugs fleetforge-proxy into the peer benchmark (run-peers.sh --proxy-cmd).
# The harness gives PROXY_MODE, PROXY_LISTEN, UPSTREAM_HOST/ADDR/URL/CA, PROXY_WORK_DIR and, in
# forward mode, PROXY_CA_CERT (where the interception CA must be written). See bench/README.md.
#
# FLEETFORGE_BENCH_FEATURE picks what the proxy does on every call, so that one feature can be
# measured on against off:
#   (unset)  receipts recorded into the spool, not shipped (no control service)
#   norec    receipts off (FLEETFORGE_RECEIPTS=false): the baseline
#   record   receipts recorded and shipped to a control service (SQLite) this script starts
#   caps     receipts off; capability tokens on: every call is checked against a run token from
#            that control service (the listener's default run and FLEETFORGE_DEFAULT_TOKEN)
#   policy   receipts off; the four example Wasm packs decide every call
# The control service runs in its own session, so the harness counts the proxy's CPU only; its
# CPU is written to $PROXY_WORK_DIR/control-cpu when the proxy stops.
# Extra proxy flags can be passed in FLEETFORGE_BENCH_ARGS.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${FLEETFORGE_PROXY_BIN:-$here/../target/release/fleetforge-proxy}
control_bin=$(dirname "$bin")/fleetforge-control
home=$PROXY_WORK_DIR/home
feature=${FLEETFORGE_BENCH_FEATURE:-}
# shellcheck disable=SC2206
extra=(${FLEETFORGE_BENCH_ARGS:-})
common=(--home "$home" --admin-listen 127.0.0.1:0 --resolve "$UPSTREAM_HOST=$UPSTREAM_ADDR"
        --upstream-ca "$UPSTREAM_CA" --log warn)

control_pid=
start_control() {
  local token=fft_bench-$RANDOM$RANDOM out=$PROXY_WORK_DIR/control.out
  env -u DATABASE_URL FLEETFORGE_HOME="$PROXY_WORK_DIR/control" FLEETFORGE_CONTROL_LISTEN=127.0.0.1:0 \
    FLEETFORGE_CONTROL_TOKEN="$token" FLEETFORGE_LOG=warn \
    setsid "$control_bin" >"$out" 2>"$PROXY_WORK_DIR/control.err" &
  control_pid=$!
  for _ in $(seq 200); do [[ -s $out ]] && break; sleep 0.05; done
  local listen
  listen=$(head -1 "$out" | python3 -c 'import json,sys;print(json.load(sys.stdin)["listen"])')
  export FLEETFORGE_CONTROL_URL=http://$listen FLEETFORGE_CONTROL_TOKEN=$token
}

case $feature in
  "") ;;
  norec) export FLEETFORGE_RECEIPTS=false ;;
  record) start_control; export FLEETFORGE_SPOOL_MAX=8GiB FLEETFORGE_CAPABILITIES=false ;;
  caps)
    export FLEETFORGE_RECEIPTS=false FLEETFORGE_CAPABILITIES=true
    start_control
    run=$(curl -sf "$FLEETFORGE_CONTROL_URL/v1/runs" -H "authorization: Bearer $FLEETFORGE_CONTROL_TOKEN" \
      -H 'content-type: application/json' \
      -d "{\"agent\":\"bench\",\"grants\":{\"hosts\":[\"$UPSTREAM_HOST\"],\"methods\":[\"POST\"],\"paths\":[\"/v1/\"],\"models\":[\"gpt-4o*\"]}}")
    FLEETFORGE_DEFAULT_RUN=$(python3 -c 'import json,sys;print(json.loads(sys.argv[1])["id"])' "$run")
    FLEETFORGE_DEFAULT_TOKEN=$(python3 -c 'import json,sys;print(json.loads(sys.argv[1])["token"])' "$run")
    export FLEETFORGE_DEFAULT_RUN FLEETFORGE_DEFAULT_TOKEN ;;
  policy)
    export FLEETFORGE_RECEIPTS=false
    # shellcheck source=bench/example-packs.sh
    source "$here/example-packs.sh"
    mapfile -t pack_args < <(example_packs "$PROXY_WORK_DIR/packs" "$UPSTREAM_HOST")
    common+=("${pack_args[@]}") ;;
  *) echo "proxy-cmd.sh: FLEETFORGE_BENCH_FEATURE must be norec, record, caps or policy, got $feature" >&2; exit 2 ;;
esac
common+=("${extra[@]}")

case $PROXY_MODE in
  sidecar) args=(--listen 127.0.0.1:0 --sidecar "$PROXY_LISTEN=$UPSTREAM_URL") ;;
  forward) args=(--listen "$PROXY_LISTEN" --intercept "$UPSTREAM_HOST") ;;
  *) echo "proxy-cmd.sh: PROXY_MODE must be sidecar or forward, got ${PROXY_MODE:-nothing}" >&2; exit 2 ;;
esac
"$bin" "${common[@]}" "${args[@]}" &
pid=$!
stop() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" || true
  if [[ -n $control_pid ]]; then
    awk '{print "control CPU ticks:", $14+$15}' "/proc/$control_pid/stat" >"$PROXY_WORK_DIR/control-cpu" 2>/dev/null || true
    kill -TERM "$control_pid" 2>/dev/null || true
    wait "$control_pid" 2>/dev/null || true
  fi
}
trap 'stop; exit 0' TERM INT
if [[ $PROXY_MODE == forward ]]; then
  for _ in $(seq 300); do [[ -s $home/ca/ca.pem ]] && break; sleep 0.1; done
  cp "$home/ca/ca.pem" "$PROXY_CA_CERT"
fi
wait "$pid"
