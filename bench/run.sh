#!/usr/bin/env bash
# bench/run.sh — direct vs FleetForge sidecar vs FleetForge forward (TLS interception), one run,
# with receipts recorded and shipped to a control service, and the sidecar again with recording off.
#
# usage: bench/run.sh [--duration S] [--rounds R] [--concurrency C] [--chunks N] [--chunk-delay-ms MS]
#                     [--rss N] [--no-load]
#
# Starts the project's fake LLM upstream (tests/, HTTPS, api.llm.test), fleetforge-control
# (SQLite under the work dir, or Postgres when BENCH_DATABASE_URL is set), one fleetforge-proxy
# with a sidecar listener and the forward listener that records every call and ships the receipts
# to that control, a second proxy with recording off (FLEETFORGE_RECEIPTS=false, sidecar only),
# and a third with recording off and capability tokens on (FLEETFORGE_CAPABILITIES=true; the load
# presents a run token minted by control), the same again with the upstream configured as a tool
# (sidecar-tool: every call also mints a per-call token), and one with recording off and the four example
# Wasm policy packs on (sidecar-pol), so the cost of each shows against the same baseline. The
# capability proxy also serves a second run whose token carries a budget (tokens, cost and calls,
# each far above what the load uses): sidecar-bud is sidecar-cap with every call estimated with
# OpenAI's tokenizer, reserved and settled, so sidecar-bud/sidecar-cap is the cost of budgets.
# OpenTelemetry: sidecar-otel is a recording proxy configured as the first with span export to a
# local OTLP receiver, so sidecar-otel/sidecar is what export keeps of the throughput.
# Sealing: the recording proxy seals every call (the default); sidecar-noseal is a second
# recording, shipping proxy with FLEETFORGE_SEAL=false, so sidecar/sidecar-noseal is what sealing
# keeps of the throughput. Replay: before the rounds, the recording sidecar records a run
# (bench-replay) of exactly as many calls per mode as the replay rows will make; then a proxy in
# strict replay mode (FLEETFORGE_REPLAY=bench-replay:strict, recording its own receipts) serves
# them as sidecar-replay, each window a fixed number of calls (--replay-calls) instead of a
# duration, so sidecar-replay/sidecar is strict replay against live forwarding.
# Then drives the same OpenAI-shaped load with oha (JSON and SSE) straight at the upstream,
# through the three sidecars, and through the forward proxy (CONNECT + TLS interception, keep-alive
# inside the tunnel). Rounds alternate the scenario order. Prints req/s, p50/p99 latency, TTFB,
# req/s relative to direct, CPU µs per request of the proxy, of control (ingest) and of the
# upstream (from /proc, per measured window), and the ingest drain: how long after the load
# stops control has acknowledged every receipt the proxy recorded (the lag of the last receipt).
# Compare ratios, not absolute numbers: client, proxies, control and upstream share the CPUs.
# --rss N then opens N client connections (half intercepted TLS, half sidecar), each completing
# a request and staying open, and reports the proxy's resident memory (bench/rss.py).
#
# For peers (nginx, squid, mitmproxy, LiteLLM) in the same run, use the shared harness with
# bench/proxy-cmd.sh (see bench/README.md).
#
# Env: BENCH_STATE (default ~/.cache/fleetforge-bench: oha install, results), OHA (path to oha),
# BENCH_DATABASE_URL (control on Postgres instead of SQLite), BENCH_ONLY (a space-separated list of
# scenarios to measure instead of all, e.g. "direct sidecar sidecar-replay"), BENCH_BASELINE (a directory holding
# the fleetforge-proxy of another commit: it is started beside the recording proxy, configured the
# same and shipping to the same control, and measured as sidecar-base and forward-base in the same
# rounds, so a change's cost shows as the CPU µs/req of sidecar vs sidecar-base; build it with
# `git worktree add /tmp/base COMMIT && cargo build --release -p fleetforge-proxy` there).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=5 ROUNDS=2 CONC=16 CHUNKS=20 DELAY=0 WARMUP=1 RSS=0 LOAD=1 REPLAY_N=20000 REPLAY_WARM=2000
while (($#)); do
  case $1 in
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    --chunks) CHUNKS=$2; shift 2 ;;
    --chunk-delay-ms) DELAY=$2; shift 2 ;;
    --rss) RSS=$2; shift 2 ;;
    --replay-calls) REPLAY_N=$2; shift 2 ;;
    --no-load) LOAD=0; shift ;;
    -h|--help) sed -n '2,47p' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
BENCH_STATE=${BENCH_STATE:-$HOME/.cache/fleetforge-bench}
mkdir -p "$BENCH_STATE/results"
work=$(mktemp -d "${TMPDIR:-/tmp}/ffbench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }

oha=${OHA:-$(command -v oha || true)}
[[ -z $oha && -x $BENCH_STATE/.tools/bin/oha ]] && oha=$BENCH_STATE/.tools/bin/oha
if [[ -z $oha ]]; then
  log "installing oha 1.16.0 into $BENCH_STATE/.tools (cargo install, several minutes)"
  cargo install --locked --root "$BENCH_STATE/.tools" oha --version 1.16.0 >"$work/oha-install.log" 2>&1
  oha=$BENCH_STATE/.tools/bin/oha
fi
log "building release binaries"
(cd "$root" && cargo build --release --locked -p fleetforge-proxy -p fleetforge-control -p fleetforge-e2e --bins >"$work/build.log" 2>&1) \
  || { tail -20 "$work/build.log" >&2; exit 1; }
target=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')/release

# First line of a background command's stdout (its JSON ready line).
ready_line() { # file
  for _ in $(seq 200); do [[ -s $1 ]] && head -1 "$1" && return 0; sleep 0.05; done
  echo "no ready line in $1" >&2; return 1
}
"$target/fleetforge-fake-upstream" --listen 127.0.0.1:0 --names api.llm.test --ca-dir "$work" --threads 1 >"$work/upstream.out" 2>"$work/upstream.err" &
pids+=($!); up_pid=$!
up=$(ready_line "$work/upstream.out" | python3 -c 'import json,sys;print(json.load(sys.stdin)["addr"])')
up_port=${up##*:}
token=fft_bench-$RANDOM$RANDOM
# Control on SQLite under the work dir, or on BENCH_DATABASE_URL.
env -u DATABASE_URL ${BENCH_DATABASE_URL:+DATABASE_URL=$BENCH_DATABASE_URL} FLEETFORGE_HOME="$work/control" \
  FLEETFORGE_CONTROL_LISTEN=127.0.0.1:0 FLEETFORGE_CONTROL_TOKEN="$token" FLEETFORGE_LOG=warn \
  "$target/fleetforge-control" >"$work/control.out" 2>"$work/control.err" &
pids+=($!); control_pid=$!
control=$(ready_line "$work/control.out" | python3 -c 'import json,sys;print(json.load(sys.stdin)["listen"])')
proxy_args=(--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --sidecar "127.0.0.1:0=https://api.llm.test:$up_port"
  --resolve "api.llm.test=$up" --upstream-ca "$work/test-ca.pem" --intercept api.llm.test --log warn)
# Recording and shipping; run tokens are not checked here (their cost is sidecar-cap's), so the
# load presents none and checks are turned off explicitly.
FLEETFORGE_CONTROL_URL="http://$control" FLEETFORGE_CONTROL_TOKEN="$token" FLEETFORGE_SPOOL_MAX=8GiB \
  FLEETFORGE_CAPABILITIES=false "$target/fleetforge-proxy" --home "$work/home" "${proxy_args[@]}" \
  >"$work/proxy.out" 2>"$work/proxy.err" &
pids+=($!); proxy_pid=$!
base_pid=
if [[ -n ${BENCH_BASELINE:-} ]]; then
  [[ -x $BENCH_BASELINE/fleetforge-proxy ]] || { echo "bench/run.sh: no fleetforge-proxy in BENCH_BASELINE=$BENCH_BASELINE" >&2; exit 2; }
  FLEETFORGE_CONTROL_URL="http://$control" FLEETFORGE_CONTROL_TOKEN="$token" FLEETFORGE_SPOOL_MAX=8GiB \
    FLEETFORGE_CAPABILITIES=false "$BENCH_BASELINE/fleetforge-proxy" --home "$work/home-base" "${proxy_args[@]}" \
    >"$work/proxy-base.out" 2>"$work/proxy-base.err" &
  pids+=($!); base_pid=$!
fi
# Recording and shipping as the first, with OpenTelemetry export on: a span per call sent over
# OTLP/HTTP to a local receiver (tests' fleetforge-otlp-sink, which decodes and counts them), so
# sidecar-otel/sidecar is what export keeps of the throughput.
"$target/fleetforge-otlp-sink" >"$work/otlp-sink.out" 2>"$work/otlp-sink.err" &
pids+=($!); sink_pid=$!
sink=$(ready_line "$work/otlp-sink.out" | python3 -c 'import json,sys;print(json.load(sys.stdin)["addr"])')
FLEETFORGE_CONTROL_URL="http://$control" FLEETFORGE_CONTROL_TOKEN="$token" FLEETFORGE_SPOOL_MAX=8GiB \
  FLEETFORGE_CAPABILITIES=false OTEL_EXPORTER_OTLP_ENDPOINT="http://$sink" OTEL_BSP_SCHEDULE_DELAY=200 \
  "$target/fleetforge-proxy" --home "$work/home-otel" "${proxy_args[@]}" >"$work/proxy-otel.out" 2>"$work/proxy-otel.err" &
pids+=($!); otel_pid=$!
# Recording and shipping as the first, with sealing off.
FLEETFORGE_CONTROL_URL="http://$control" FLEETFORGE_CONTROL_TOKEN="$token" FLEETFORGE_SPOOL_MAX=8GiB \
  FLEETFORGE_CAPABILITIES=false FLEETFORGE_SEAL=false "$target/fleetforge-proxy" --home "$work/home-noseal" \
  "${proxy_args[@]}" >"$work/proxy-noseal.out" 2>"$work/proxy-noseal.err" &
pids+=($!); noseal_pid=$!
FLEETFORGE_RECEIPTS=false "$target/fleetforge-proxy" --home "$work/home-norec" "${proxy_args[@]}" \
  >"$work/proxy-norec.out" 2>"$work/proxy-norec.err" &
pids+=($!); norec_pid=$!
# Recording off, capability tokens on: every call presents a run token (Biscuit) that is checked.
FLEETFORGE_RECEIPTS=false FLEETFORGE_CAPABILITIES=true FLEETFORGE_CONTROL_URL="http://$control" \
  FLEETFORGE_CONTROL_TOKEN="$token" "$target/fleetforge-proxy" --home "$work/home-cap" "${proxy_args[@]}" \
  >"$work/proxy-cap.out" 2>"$work/proxy-cap.err" &
pids+=($!); cap_pid=$!
# The same with the upstream configured as a tool: every call also gets a per-call token minted
# (one block, one ed25519 signature) and sent upstream in x-fleetforge-capability.
FLEETFORGE_RECEIPTS=false FLEETFORGE_CAPABILITIES=true FLEETFORGE_TOOL_HOSTS=api.llm.test \
  FLEETFORGE_CONTROL_URL="http://$control" FLEETFORGE_CONTROL_TOKEN="$token" \
  "$target/fleetforge-proxy" --home "$work/home-tool" "${proxy_args[@]}" >"$work/proxy-tool.out" 2>"$work/proxy-tool.err" &
pids+=($!); tool_pid=$!
# Recording off, policy on: the four example Wasm packs (configured for the bench host) decide
# every call, deny-overrides.
# shellcheck source=bench/example-packs.sh
source "$here/example-packs.sh"
mapfile -t pack_args < <(example_packs "$work/packs" api.llm.test)
FLEETFORGE_RECEIPTS=false "$target/fleetforge-proxy" --home "$work/home-pol" "${proxy_args[@]}" "${pack_args[@]}" \
  >"$work/proxy-pol.out" 2>"$work/proxy-pol.err" &
pids+=($!); pol_pid=$!
run_json=$(curl -sf "http://$control/v1/runs" -H "authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"agent":"bench","grants":{"hosts":["api.llm.test"],"methods":["POST"],"paths":["/v1/"],"models":["gpt-4o*"]}}')
cap_run=$(python3 -c 'import json,sys;print(json.loads(sys.argv[1])["id"])' "$run_json")
cap_token=$(python3 -c 'import json,sys;print(json.loads(sys.argv[1])["token"])' "$run_json")
bud_json=$(curl -sf "http://$control/v1/runs" -H "authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"agent":"bench","grants":{"hosts":["api.llm.test"],"methods":["POST"],"paths":["/v1/"],"models":["gpt-4o*"]},
       "budget":{"tokens":1000000000000,"cost_usd":1000000,"calls":1000000000000}}')
bud_run=$(python3 -c 'import json,sys;print(json.loads(sys.argv[1])["id"])' "$bud_json")
bud_token=$(python3 -c 'import json,sys;print(json.loads(sys.argv[1])["token"])' "$bud_json")
ready=$(ready_line "$work/proxy.out")
field() { python3 -c 'import json,sys;v=json.loads(sys.argv[1])[sys.argv[2]];print(v[0] if isinstance(v,list) else v)' "$@"; }
fwd=$(field "$ready" forward)
side=$(field "$ready" sidecars)
admin=$(field "$ready" admin)
cat "$work/test-ca.pem" "$work/home/ca/ca.pem" >"$work/client-ca.pem"
side_norec=$(field "$(ready_line "$work/proxy-norec.out")" sidecars)
noseal_ready=$(ready_line "$work/proxy-noseal.out")
side_noseal=$(field "$noseal_ready" sidecars)
admin_noseal=$(field "$noseal_ready" admin)
otel_ready=$(ready_line "$work/proxy-otel.out")
side_otel=$(field "$otel_ready" sidecars)
admin_otel=$(field "$otel_ready" admin)
side_cap=$(field "$(ready_line "$work/proxy-cap.out")" sidecars)
side_tool=$(field "$(ready_line "$work/proxy-tool.out")" sidecars)
side_pol=$(field "$(ready_line "$work/proxy-pol.out")" sidecars)
if [[ -n $base_pid ]]; then
  base_ready=$(ready_line "$work/proxy-base.out")
  fwd_base=$(field "$base_ready" forward)
  side_base=$(field "$base_ready" sidecars)
  admin_base=$(field "$base_ready" admin)
  cat "$work/home-base/ca/ca.pem" >>"$work/client-ca.pem"
fi
log "upstream $up, control $control ($([[ -n ${BENCH_DATABASE_URL:-} ]] && echo postgres || echo sqlite)), proxy forward $fwd" \
  "sidecar $side (recording), sidecar $side_norec (recording off), oha $($oha --version | head -1)"

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# Seconds until control has acknowledged every receipt the proxy recorded (max 120 s).
drain() { python3 "$here/drain_wait.py" "$1"; } # admin address
url_direct="https://api.llm.test:$up_port/v1/chat/completions"
replay_pid= side_replay= admin_replay=
if ((LOAD)); then
  # Record the run the replay rows re-serve: as many calls per mode as they will make.
  rec_n=$(((REPLAY_N + REPLAY_WARM) * ROUNDS))
  for mode in nonstream stream; do
    log "recording $rec_n $mode calls as run bench-replay"
    "$oha" -n "$rec_n" -c "$CONC" --no-tui --output-format json -m POST -T application/json -H "x-test-chunks: $CHUNKS" \
      -H "x-test-chunk-delay-ms: $DELAY" -H "x-fleetforge-run: bench-replay" -D "$here/bodies/body-$mode.json" -t 30s \
      "http://$side/v1/chat/completions" >"$work/record-$mode.json" 2>&1
  done
  drain "$admin" >/dev/null
  FLEETFORGE_CONTROL_URL="http://$control" FLEETFORGE_CONTROL_TOKEN="$token" FLEETFORGE_SPOOL_MAX=8GiB \
    FLEETFORGE_CAPABILITIES=false FLEETFORGE_REPLAY=bench-replay:strict \
    "$target/fleetforge-proxy" --home "$work/home-replay" "${proxy_args[@]}" >"$work/proxy-replay.out" 2>"$work/proxy-replay.err" &
  pids+=($!); replay_pid=$!
  for _ in $(seq 1200); do [[ -s $work/proxy-replay.out ]] && break; kill -0 "$replay_pid" 2>/dev/null || break; sleep 0.25; done
  [[ -s $work/proxy-replay.out ]] || { echo "replaying proxy did not start:" >&2; tail -5 "$work/proxy-replay.err" >&2; exit 1; }
  replay_ready=$(head -1 "$work/proxy-replay.out")
  side_replay=$(field "$replay_ready" sidecars)
  admin_replay=$(field "$replay_ready" admin)
  log "replaying proxy ready (sidecar $side_replay)"
fi
rows=$work/rows.tsv
: >"$rows"
measure() { # scenario mode round
  local s=$1 mode=$2 r=$3 args=()
  case $s in
    direct) args=(--connect-to "api.llm.test:$up_port:127.0.0.1:$up_port" --cacert "$work/test-ca.pem" "$url_direct") ;;
    sidecar) args=("http://$side/v1/chat/completions") ;;
    sidecar-norec) args=("http://$side_norec/v1/chat/completions") ;;
    sidecar-noseal) args=("http://$side_noseal/v1/chat/completions") ;;
    sidecar-otel) args=("http://$side_otel/v1/chat/completions") ;;
    sidecar-replay) args=(-H "x-fleetforge-run: bench-replay-r$r" "http://$side_replay/v1/chat/completions") ;;
    sidecar-cap) args=(-H "x-fleetforge-run: $cap_run" -H "x-fleetforge-token: $cap_token" "http://$side_cap/v1/chat/completions") ;;
    sidecar-bud) args=(-H "x-fleetforge-run: $bud_run" -H "x-fleetforge-token: $bud_token" "http://$side_cap/v1/chat/completions") ;;
    sidecar-tool) args=(-H "x-fleetforge-run: $cap_run" -H "x-fleetforge-token: $cap_token" "http://$side_tool/v1/chat/completions") ;;
    sidecar-pol) args=("http://$side_pol/v1/chat/completions") ;;
    forward) args=(-x "http://$fwd" --no-pre-lookup --cacert "$work/client-ca.pem" "$url_direct") ;;
    sidecar-base) args=("http://$side_base/v1/chat/completions") ;;
    forward-base) args=(-x "http://$fwd_base" --no-pre-lookup --cacert "$work/client-ca.pem" "$url_direct") ;;
  esac
  local common=(-c "$CONC" --no-tui --output-format json -m POST -T application/json
    -H "x-test-chunks: $CHUNKS" -H "x-test-chunk-delay-ms: $DELAY" -D "$here/bodies/body-$mode.json" -t 30s)
  local warm=(-z "${WARMUP}s") window=(-z "${DURATION}s")
  [[ $s == sidecar-replay ]] && warm=(-n "$REPLAY_WARM") window=(-n "$REPLAY_N")
  "$oha" "${warm[@]}" "${common[@]}" "${args[@]}" >/dev/null 2>&1 || true
  local pid=$proxy_pid lag=- p0 u0 c0 p1 u1 c1 drain_admin=$admin
  [[ $s == sidecar-norec ]] && pid=$norec_pid
  [[ $s == sidecar-noseal ]] && pid=$noseal_pid drain_admin=$admin_noseal
  [[ $s == sidecar-otel ]] && pid=$otel_pid drain_admin=$admin_otel
  [[ $s == sidecar-replay ]] && pid=$replay_pid drain_admin=$admin_replay
  [[ $s == sidecar-cap || $s == sidecar-bud ]] && pid=$cap_pid
  [[ $s == sidecar-tool ]] && pid=$tool_pid
  [[ $s == sidecar-pol ]] && pid=$pol_pid
  [[ $s == *-base ]] && pid=$base_pid drain_admin=$admin_base
  local records=1
  [[ $s == direct || $s == sidecar-norec || $s == sidecar-cap || $s == sidecar-bud || $s == sidecar-tool || $s == sidecar-pol ]] && records=0
  ((records)) && drain "$drain_admin" >/dev/null # the warm-up's receipts are in before we count
  p0=$(ticks "$pid"); u0=$(ticks "$up_pid"); c0=$(ticks "$control_pid")
  "$oha" "${window[@]}" "${common[@]}" "${args[@]}" >"$work/$s-$mode-$r.json" 2>"$work/$s-$mode-$r.err"
  ((records)) && lag=$(drain "$drain_admin")
  p1=$(ticks "$pid"); u1=$(ticks "$up_pid"); c1=$(ticks "$control_pid")
  [[ $s == direct ]] && p1=$p0
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$mode" "$r" "$work/$s-$mode-$r.json" "$((p1 - p0))" "$((u1 - u0))" \
    "$((c1 - c0))" "$lag" >>"$rows"
}
((LOAD)) || ROUNDS=0
for ((r = 1; r <= ROUNDS; r++)); do
  order=(direct sidecar sidecar-otel sidecar-noseal sidecar-replay sidecar-norec sidecar-cap sidecar-bud sidecar-tool sidecar-pol forward)
  [[ -n ${BENCH_ONLY:-} ]] && read -r -a order <<<"$BENCH_ONLY"
  [[ -n $base_pid ]] && order=(direct sidecar sidecar-base sidecar-otel sidecar-noseal sidecar-replay sidecar-norec sidecar-cap sidecar-bud sidecar-tool sidecar-pol forward forward-base)
  if ((r % 2 == 0)); then
    rev=()
    for ((i = ${#order[@]} - 1; i >= 0; i--)); do rev+=("${order[i]}"); done
    order=("${rev[@]}")
  fi
  for s in "${order[@]}"; do
    for mode in nonstream stream; do
      log "round $r: $s/$mode"
      measure "$s" "$mode" "$r"
    done
  done
done
out=$BENCH_STATE/results/fleetforge-$(date +%Y%m%d-%H%M%S).md
: >"$out"
if ((LOAD)); then
  python3 "$here/summarize.py" "$rows" "$(getconf CLK_TCK)" \
    "duration ${DURATION}s x $ROUNDS rounds, concurrency $CONC, $CHUNKS SSE chunks, chunk delay ${DELAY} ms, control on $([[ -n ${BENCH_DATABASE_URL:-} ]] && echo Postgres || echo SQLite)" | tee -a "$out"
fi
if ((RSS > 0)); then
  ulimit -n 8192 2>/dev/null || true
  log "opening $RSS client connections"
  { echo; echo "| memory | |"; echo "|---|---|"
    python3 "$here/rss.py" "$proxy_pid" "$fwd" "$side" api.llm.test "$up_port" "$work/client-ca.pem" "$RSS"; } | tee -a "$out"
fi
log "report: $out (raw: $work)"
trap - EXIT
cleanup
