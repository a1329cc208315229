#!/usr/bin/env bash
# Adapter that plugs fleetforge-proxy into the peer benchmark (run-peers.sh --proxy-cmd).
# The harness gives PROXY_MODE, PROXY_LISTEN, UPSTREAM_HOST/ADDR/URL/CA, PROXY_WORK_DIR and, in
# forward mode, PROXY_CA_CERT (where the interception CA must be written). See bench/README.md.
# Extra proxy flags can be passed in FLEETFORGE_BENCH_ARGS.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${FLEETFORGE_PROXY_BIN:-$here/../target/release/fleetforge-proxy}
home=$PROXY_WORK_DIR/home
# shellcheck disable=SC2206
extra=(${FLEETFORGE_BENCH_ARGS:-})
common=(--home "$home" --admin-listen 127.0.0.1:0 --resolve "$UPSTREAM_HOST=$UPSTREAM_ADDR"
        --upstream-ca "$UPSTREAM_CA" --log warn "${extra[@]}")
case $PROXY_MODE in
  sidecar)
    exec "$bin" "${common[@]}" --listen 127.0.0.1:0 --sidecar "$PROXY_LISTEN=$UPSTREAM_URL" ;;
  forward)
    "$bin" "${common[@]}" --listen "$PROXY_LISTEN" --intercept "$UPSTREAM_HOST" &
    pid=$!
    trap 'kill -TERM "$pid" 2>/dev/null; wait "$pid"' TERM INT
    for _ in $(seq 300); do [[ -s $home/ca/ca.pem ]] && break; sleep 0.1; done
    cp "$home/ca/ca.pem" "$PROXY_CA_CERT"
    wait "$pid" ;;
  *) echo "proxy-cmd.sh: PROXY_MODE must be sidecar or forward, got ${PROXY_MODE:-nothing}" >&2; exit 2 ;;
esac
