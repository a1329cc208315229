#!/usr/bin/env bash
# bench/drain.sh — how far receipt ingest lags behind the proxy under load, on Postgres.
#
# usage: BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test bench/drain.sh [--duration S]
#
# Starts the fake upstream, fleetforge-control on a scratch database (ffdrain, dropped and created
# on the server of BENCH_DATABASE_URL) and a recording fleetforge-proxy with one sidecar, runs a
# 1 s warm-up, waits 2 s, then drives a JSON load with oha (16 connections) and prints every
# 0.5 s the receipts recorded, shipped (acknowledged by control) and the backlog, then how long
# after the load the backlog took to drain, control's CPU and its ingest-batch histogram totals.
# Uses the release binaries (cargo build --release) and oha (OHA, or $BENCH_STATE/.tools/bin/oha).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=5
while (($#)); do
  case $1 in
    --duration) DURATION=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "bench/drain.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
: "${BENCH_DATABASE_URL:?set BENCH_DATABASE_URL to a Postgres server (e.g. postgres://postgres@127.0.0.1:5432/test)}"
BENCH_STATE=${BENCH_STATE:-$HOME/.cache/fleetforge-bench}
oha=${OHA:-$BENCH_STATE/.tools/bin/oha}
[[ -x $oha ]] || { echo "bench/drain.sh: no oha at $oha; run bench/run.sh once (it installs it) or set OHA" >&2; exit 1; }
target=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')/release
for b in fleetforge-fake-upstream fleetforge-control fleetforge-proxy; do
  [[ -x $target/$b ]] || { echo "bench/drain.sh: $target/$b is missing; run cargo build --release" >&2; exit 1; }
done
w=$(mktemp -d "${TMPDIR:-/tmp}/ffdrain.XXXXXX")
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
ready_line() { for _ in $(seq 200); do [[ -s $1 ]] && head -1 "$1" && return 0; sleep 0.05; done; echo "no ready line in $1" >&2; return 1; }
json() { python3 -c 'import json,sys;v=json.loads(sys.argv[1])[sys.argv[2]];print(v[0] if isinstance(v,list) else v)' "$@"; }

"$target/fleetforge-fake-upstream" --listen 127.0.0.1:0 --names api.llm.test --ca-dir "$w" --threads 1 >"$w/up.out" 2>"$w/up.err" &
pids+=($!)
up=$(json "$(ready_line "$w/up.out")" addr)
scratch=${BENCH_DATABASE_URL%/*}/ffdrain
psql -q "$BENCH_DATABASE_URL" -c "DROP DATABASE IF EXISTS ffdrain" -c "CREATE DATABASE ffdrain" 2>/dev/null
token=fft_drain-$RANDOM$RANDOM
env DATABASE_URL="$scratch" FLEETFORGE_HOME="$w/control" FLEETFORGE_CONTROL_LISTEN=127.0.0.1:0 \
  FLEETFORGE_CONTROL_TOKEN="$token" FLEETFORGE_LOG=warn "$target/fleetforge-control" >"$w/control.out" 2>"$w/control.err" &
pids+=($!); control_pid=$!
control=$(json "$(ready_line "$w/control.out")" listen)
FLEETFORGE_CONTROL_URL="http://$control" FLEETFORGE_CONTROL_TOKEN="$token" FLEETFORGE_SPOOL_MAX=8GiB FLEETFORGE_CAPABILITIES=false \
  "$target/fleetforge-proxy" --home "$w/home" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --sidecar "127.0.0.1:0=https://api.llm.test:${up##*:}" --resolve "api.llm.test=$up" --upstream-ca "$w/test-ca.pem" \
  --log warn >"$w/proxy.out" 2>"$w/proxy.err" &
pids+=($!); proxy_pid=$!
ready=$(ready_line "$w/proxy.out")
side=$(json "$ready" sidecars)
admin=$(json "$ready" admin)
load=(-c 16 --no-tui --output-format json -m POST -T application/json -D "$here/bodies/body-nonstream.json" -t 30s
  "http://$side/v1/chat/completions")
"$oha" -z 1s "${load[@]}" >/dev/null 2>&1
sleep 2
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
c0=$(ticks "$control_pid")
"$oha" -z "${DURATION}s" "${load[@]}" >"$w/oha.json" 2>"$w/oha.err" &
oha_pid=$!
python3 - "$admin" "$oha_pid" <<'PY'
import os, re, sys, time, urllib.request
admin, load = sys.argv[1], sys.argv[2]
def counts():
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    rec = sum(float(v) for v in re.findall(r"^fleetforge_receipts_recorded_total (\S+)$", text, re.M))
    shipped = sum(float(v) for v in re.findall(r"^fleetforge_receipts_shipped_total\{[^}]*\} (\S+)$", text, re.M))
    return rec, shipped
def running():
    try:
        return open(f"/proc/{load}/stat").read().split()[2] != "Z"
    except OSError:
        return False
start, printed, ended = time.monotonic(), None, None
while True:
    rec, shipped = counts()
    now = time.monotonic() - start
    if ended is None and not running():
        ended = now
    if printed is None or now - printed >= 0.5:
        print(f"t={now:5.2f}s recorded={rec:.0f} shipped={shipped:.0f} backlog={rec - shipped:.0f}", flush=True)
        printed = now
    if ended is not None and shipped >= rec:
        print(f"load ended at {ended:.2f}s; backlog drained {now - ended:.2f}s after")
        break
    if now > 300:
        sys.exit("bench/drain.sh: the backlog did not drain within 300 s")
    time.sleep(0.02)
PY
wait "$oha_pid" || true
c1=$(ticks "$control_pid")
echo "control CPU: $(( (c1 - c0) * 1000 / $(getconf CLK_TCK) )) ms"
curl -sf "http://$control/metrics" -H "authorization: Bearer $token" | grep -E "^fleetforge_control_ingest_batch_seconds_(sum|count)" || true
