#!/usr/bin/env bash
# bench/peers.sh — FleetForge against the proxies it is compared with, side by side in one run.
#
# usage: bench/peers.sh [--duration S] [--rounds R] [--concurrency C] [--chunks N]
#                       [--ttfb-delay-ms MS] [--rss N] [--profile S [--profile-row ROW] [--profile-mode json|sse]]
#                       [--only LIST] [--no-install]
#
# Rows (ids for --only; direct always runs):
#   direct        oha -> the fake upstream over HTTPS: the limit every row is compared with
#   sidecar       fleetforge-proxy sidecar (plain HTTP in, HTTPS out) with no trust work: receipts,
#                 sealing, capabilities, policy and telemetry off
#   forward-full  fleetforge-proxy as HTTPS_PROXY (CONNECT + TLS interception) with every feature
#                 on: the run's Biscuit checked and a per-call token minted (the upstream is a tool
#                 host), three Wasm packs (allowlist, model-limits, mcp-tools), a budget reserved
#                 and settled on every call, request and response sealed, a signed receipt written
#                 to the spool and shipped to fleetforge-control on Postgres, a span per call
#                 exported over OTLP/HTTP to a local receiver. The load authenticates as an agent
#                 does: http://RUN:TOKEN@proxy
#   nginx         nginx as a reverse proxy (plain HTTP in, HTTPS out, keep-alive pool, no buffering)
#   mitmproxy     mitmdump intercepting as HTTPS_PROXY (the client trusts its CA)
#   litellm       LiteLLM proxy, one OpenAI-compatible model on the fake upstream, no database
#
# Each row is measured with JSON and SSE (20 chunk events, a usage chunk, [DONE]) bodies, with oha
# at C connections (16) for S seconds (5) after a 1 s warm-up, in R rounds (3); round 2 reverses
# the order so drift in the machine's speed hits every row alike. Figures are medians over rounds:
# req/s, p50, p99, CPU µs per request of the row's own processes (read from /proc over the
# window), and for forward-full the CPU of control and of Postgres apart. Then:
#   TTFB   SSE first byte with the upstream pacing chunks --ttfb-delay-ms apart (5), one
#          connection, for direct, sidecar, forward-full and nginx: does anything buffer?
#   RSS    --rss N client connections (1000) opened through forward-full (half intercepted TLS,
#          half to its sidecar listener), each completing a request and staying open; the
#          proxy's resident memory.
#   PROFILE  --profile S (0: off) records a FleetForge row's stacks with perf for S seconds of load
#          (--profile-row forward-full|sidecar, --profile-mode json|sse; forward-full and json by
#          default) and draws them as a flame graph (inferno, cargo-installed into
#          $BENCH_STATE/.tools) beside the table: bench/results/profile-<row>-<mode>-<date>.svg.
# The table and the issue's bars (checked) go to stdout and to bench/results/peers-<date>.md.
#
# Installs what is missing (--no-install refuses instead): oha 1.16 (cargo install into
# $BENCH_STATE/.tools), nginx (apt-get), mitmproxy and LiteLLM (pip, pinned in bench/peers/, into
# $BENCH_STATE/.venv). A peer that cannot be installed is reported as skipped and the run goes on.
# Env: BENCH_STATE (~/.cache/fleetforge-bench), BENCH_DATABASE_URL (an existing Postgres database
# for control; by default a scratch database is created on postgres://postgres@127.0.0.1:5432 and
# dropped afterwards), FLEETFORGE_PROXY_BIN (another build's fleetforge-proxy to measure).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
DURATION=5 ROUNDS=3 CONC=16 CHUNKS=20 TTFB_DELAY=5 RSS=1000 PROFILE=0 PROFILE_ROW=forward-full PROFILE_MODE=nonstream WARMUP=1 INSTALL=1 ONLY=""
while (($#)); do
  case $1 in
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --concurrency) CONC=$2; shift 2 ;;
    --chunks) CHUNKS=$2; shift 2 ;;
    --ttfb-delay-ms) TTFB_DELAY=$2; shift 2 ;;
    --rss) RSS=$2; shift 2 ;;
    --profile) PROFILE=$2; shift 2 ;;
    --profile-row) PROFILE_ROW=$2; shift 2 ;;
    --profile-mode) case $2 in json) PROFILE_MODE=nonstream ;; sse) PROFILE_MODE=stream ;;
                      *) echo "bench/peers.sh: --profile-mode is json or sse, got '$2'" >&2; exit 2 ;; esac; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --no-install) INSTALL=0; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench/peers.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
num() { [[ $2 =~ ^[0-9]+$ ]] && (($2 >= $3 && $2 <= $4)) || { echo "bench/peers.sh: $1 must be $3..$4, got '$2'" >&2; exit 2; }; }
num --duration "$DURATION" 1 300; num --rounds "$ROUNDS" 1 10; num --concurrency "$CONC" 1 512
num --chunks "$CHUNKS" 1 1000; num --ttfb-delay-ms "$TTFB_DELAY" 0 1000; num --rss "$RSS" 0 20000; num --profile "$PROFILE" 0 600
ALL=(direct sidecar forward-full nginx mitmproxy litellm)
declare -A MODES_LABEL=([nonstream]=JSON [stream]=SSE)
[[ $PROFILE_ROW == forward-full || $PROFILE_ROW == sidecar ]] \
  || { echo "bench/peers.sh: --profile-row is forward-full or sidecar, got '$PROFILE_ROW'" >&2; exit 2; }
for id in ${ONLY//,/ }; do
  [[ " ${ALL[*]} " == *" $id "* ]] || { echo "bench/peers.sh: --only: unknown row '$id' (${ALL[*]})" >&2; exit 2; }
done
want() { [[ $1 == direct || -z $ONLY || ",$ONLY," == *",$1,"* ]]; }

BENCH_STATE=${BENCH_STATE:-$HOME/.cache/fleetforge-bench}
mkdir -p "$BENCH_STATE" "$root/bench/results"
work=$(mktemp -d "${TMPDIR:-/tmp}/ffpeers.XXXXXX")
chmod 755 "$work"
log() { printf '[peers %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
groups=() scratch_db=
cleanup() {
  local g
  for g in "${groups[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  sleep 0.5
  for g in "${groups[@]}"; do kill -KILL -- "-$g" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [[ -n $scratch_db ]] && psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $scratch_db" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Starts a command in its own process group (so its CPU is the group's) with a 2-hour cap.
start() { # name cmd...
  local name=$1; shift
  setsid timeout -k 5 7200 "$@" >"$work/$name.out" 2>"$work/$name.err" </dev/null &
  groups+=($!); LAST=$!
}

# ---- install -----------------------------------------------------------------------------------
declare -A SKIP=()
oha=${OHA:-$BENCH_STATE/.tools/bin/oha}
if [[ ! -x $oha ]]; then
  ((INSTALL)) || die "oha not found at $oha (run without --no-install)"
  log "installing oha 1.16.0 into $BENCH_STATE/.tools (cargo install, several minutes)"
  cargo install --locked --root "$BENCH_STATE/.tools" oha --version 1.16.0 >"$work/oha-install.log" 2>&1 \
    || { tail -20 "$work/oha-install.log" >&2; die "oha install failed"; }
fi
if want nginx && ! command -v nginx >/dev/null; then
  if ((INSTALL)) && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "apt-get install nginx"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx >"$work/apt.log" 2>&1 || true
  fi
  command -v nginx >/dev/null || SKIP[nginx]="nginx is not installed (apt-get install nginx)"
fi
venv() { # name entry-point
  local dir=$BENCH_STATE/.venv/$1 req=$here/peers/requirements-$1.txt cons=$here/peers/constraints-$1.txt stamp
  stamp=$(cat "$req" "$cons" | sha256sum | cut -c1-16)
  [[ -x $dir/bin/$2 && $(cat "$dir/.bench-hash" 2>/dev/null) == "$stamp" ]] && return 0
  ((INSTALL)) || return 1
  log "installing $1 into $dir (pip, pinned; at most 15 minutes)"
  rm -rf "$dir" && python3 -m venv "$dir" || return 1
  timeout 900 "$dir/bin/pip" install -q --disable-pip-version-check -r "$req" -c "$cons" >"$work/pip-$1.log" 2>&1 \
    || { tail -5 "$work/pip-$1.log" >&2; return 1; }
  echo "$stamp" >"$dir/.bench-hash"
}
if want mitmproxy && ! venv mitmproxy mitmdump; then SKIP[mitmproxy]="pip install mitmproxy failed"; fi
if want litellm; then
  if ! venv litellm litellm; then SKIP[litellm]="pip install litellm[proxy] failed or took over 15 minutes"
  # LiteLLM 1.82.7 and 1.82.8 shipped a credential stealer as litellm_init.pth: never run a venv holding it.
  elif find "$BENCH_STATE/.venv/litellm" -name litellm_init.pth | grep -q .; then
    rm -rf "$BENCH_STATE/.venv/litellm"; SKIP[litellm]="refused: litellm_init.pth in the venv (a compromised release)"
  fi
fi
if ((PROFILE > 0)); then
  command -v perf >/dev/null || die "--profile needs perf (apt-get install linux-perf)"
  if [[ ! -x $BENCH_STATE/.tools/bin/inferno-flamegraph ]]; then
    ((INSTALL)) || die "inferno not found in $BENCH_STATE/.tools (run without --no-install)"
    log "installing inferno 0.12 into $BENCH_STATE/.tools (cargo install)"
    cargo install --locked --root "$BENCH_STATE/.tools" inferno --version '^0.12' >"$work/inferno-install.log" 2>&1 \
      || { tail -20 "$work/inferno-install.log" >&2; die "inferno install failed"; }
  fi
fi
log "building release binaries"
(cd "$root" && cargo build --release --locked -p fleetforge-proxy -p fleetforge-control -p fleetforge-e2e --bins >"$work/build.log" 2>&1) \
  || { tail -20 "$work/build.log" >&2; die "cargo build failed"; }
target=$(cd "$root" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys;print(json.load(sys.stdin)["target_directory"])')/release
proxy_bin=${FLEETFORGE_PROXY_BIN:-$target/fleetforge-proxy}

# ---- start everything --------------------------------------------------------------------------
ready_line() { # file pid: the first stdout line of a process that prints one when it listens
  for _ in $(seq 600); do
    [[ -s $1 ]] && { head -1 "$1"; return 0; }
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  die "no ready line in $1: $(tail -c 400 "${1%.out}.err" 2>/dev/null)"
}
field() { python3 -c 'import json,sys;v=json.loads(sys.argv[1])[sys.argv[2]];print(v[0] if isinstance(v,list) else v)' "$@"; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port seconds pid
  for _ in $(seq $(($2 * 10))); do port_open "$1" && return 0; kill -0 "$3" 2>/dev/null || return 1; sleep 0.1; done
  return 1
}

start upstream "$target/fleetforge-fake-upstream" --listen 127.0.0.1:0 --names api.llm.test,127.0.0.1 --ca-dir "$work"
up_pg=$LAST
up=$(field "$(ready_line "$work/upstream.out" "$up_pg")" addr)
up_port=${up##*:}
ca=$work/test-ca.pem
url="https://api.llm.test:$up_port/v1/chat/completions"
declare -A PG=() URL=() OHA_ARGS=() CURL_ARGS=()
PG[direct]=
URL[direct]=$url
OHA_ARGS[direct]="--connect-to api.llm.test:$up_port:127.0.0.1:$up_port --cacert $ca"
CURL_ARGS[direct]="--resolve api.llm.test:$up_port:127.0.0.1 --cacert $ca"
proxy_common=(--admin-listen 127.0.0.1:0 --resolve "api.llm.test=$up" --upstream-ca "$ca" --log warn)

if want sidecar; then
  FLEETFORGE_RECEIPTS=false FLEETFORGE_SEAL=false FLEETFORGE_CAPABILITIES=false \
    start sidecar "$proxy_bin" --home "$work/home-sidecar" "${proxy_common[@]}" --listen 127.0.0.1:0 \
    --sidecar "127.0.0.1:0=https://api.llm.test:$up_port"
  PG[sidecar]=$LAST
  URL[sidecar]="http://$(field "$(ready_line "$work/sidecar.out" "$LAST")" sidecars)/v1/chat/completions"
fi

control_pg= admin= full_run= full_auth=
if want forward-full; then
  db_url=${BENCH_DATABASE_URL:-}
  if [[ -z $db_url ]]; then
    scratch_db=ffpeers_$$_$RANDOM
    psql -q -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $scratch_db" >/dev/null \
      || die "cannot create a scratch database on postgres://postgres@127.0.0.1:5432 (set BENCH_DATABASE_URL)"
    db_url=postgres://postgres@127.0.0.1:5432/$scratch_db
  fi
  token=fft_bench-$RANDOM$RANDOM$RANDOM
  DATABASE_URL=$db_url FLEETFORGE_HOME="$work/control" FLEETFORGE_CONTROL_LISTEN=127.0.0.1:0 \
    FLEETFORGE_CONTROL_TOKEN="$token" FLEETFORGE_LOG=warn start control "$target/fleetforge-control"
  control_pg=$LAST
  control=$(field "$(ready_line "$work/control.out" "$control_pg")" listen)
  start otlp-sink "$target/fleetforge-otlp-sink"
  sink=$(field "$(ready_line "$work/otlp-sink.out" "$LAST")" addr)
  run_json=$(curl -sf "http://$control/v1/runs" -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d '{"agent":"bench","grants":{"hosts":["api.llm.test"],"methods":["POST"],"paths":["/v1/"],"models":["gpt-4o*"]},
         "budget":{"tokens":1000000000000,"cost_usd":1000000,"calls":1000000000000}}') || die "control refused to create the bench run"
  full_run=$(field "$run_json" id)
  full_token=$(field "$run_json" token)
  # shellcheck source=bench/example-packs.sh
  source "$here/example-packs.sh"
  mapfile -t packs < <(example_packs "$work/packs" api.llm.test)
  packs=("${packs[@]:0:6}") # allowlist, model-limits, mcp-tools
  FLEETFORGE_CONTROL_URL="http://$control" FLEETFORGE_CONTROL_TOKEN="$token" FLEETFORGE_SPOOL_MAX=8GiB \
    FLEETFORGE_CAPABILITIES=true FLEETFORGE_TOOL_HOSTS=api.llm.test \
    OTEL_EXPORTER_OTLP_ENDPOINT="http://$sink" OTEL_BSP_SCHEDULE_DELAY=200 \
    FLEETFORGE_DEFAULT_RUN="$full_run" FLEETFORGE_DEFAULT_TOKEN="$full_token" \
    start forward-full "$proxy_bin" --home "$work/home-full" "${proxy_common[@]}" --listen 127.0.0.1:0 \
    --intercept api.llm.test --sidecar "127.0.0.1:0=https://api.llm.test:$up_port" "${packs[@]}"
  PG[forward-full]=$LAST
  ready=$(ready_line "$work/forward-full.out" "$LAST")
  full_fwd=$(field "$ready" forward) full_side=$(field "$ready" sidecars) admin=$(field "$ready" admin)
  cat "$ca" "$work/home-full/ca/ca.pem" >"$work/full-ca.pem"
  URL[forward-full]=$url
  OHA_ARGS[forward-full]="-x http://$full_fwd --no-pre-lookup --cacert $work/full-ca.pem"
  full_auth="Proxy-Authorization: Basic $(printf '%s:%s' "$full_run" "$full_token" | base64 -w0)"
  CURL_ARGS[forward-full]="--proxy http://$full_run:$full_token@$full_fwd --cacert $work/full-ca.pem"
fi

if want nginx && [[ -z ${SKIP[nginx]:-} ]]; then
  port=$(free_port); mkdir -p "$work/nginx"
  cat >"$work/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  upstream llm { server $up; keepalive 64; }
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass https://llm;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host api.llm.test:$up_port;
      proxy_ssl_server_name on;
      proxy_ssl_name api.llm.test;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate $ca;
      proxy_ssl_session_reuse on;
      proxy_buffering off;
      proxy_request_buffering off;
    }
  }
}
EOF
  start nginx nginx -c "$work/nginx.conf" -e "$work/nginx/error.log"
  PG[nginx]=$LAST
  wait_port "$port" 10 "$LAST" || die "nginx did not listen: $(tail -c 400 "$work/nginx.err")"
  URL[nginx]="http://127.0.0.1:$port/v1/chat/completions"
fi

if want mitmproxy && [[ -z ${SKIP[mitmproxy]:-} ]]; then
  port=$(free_port); mkdir -p "$work/mitm"
  FLEETFORGE_BENCH_RESOLVE="api.llm.test=127.0.0.1" start mitmproxy "$BENCH_STATE/.venv/mitmproxy/bin/mitmdump" \
    --listen-host 127.0.0.1 --listen-port "$port" --set confdir="$work/mitm" --set flow_detail=0 \
    --set termlog_verbosity=warn --set ssl_verify_upstream_trusted_ca="$ca" -s "$here/peers/resolve.py"
  PG[mitmproxy]=$LAST
  wait_port "$port" 30 "$LAST" || die "mitmdump did not listen: $(tail -c 400 "$work/mitmproxy.err")"
  for _ in $(seq 100); do [[ -s $work/mitm/mitmproxy-ca-cert.pem ]] && break; sleep 0.1; done
  cat "$ca" "$work/mitm/mitmproxy-ca-cert.pem" >"$work/mitm-ca.pem"
  URL[mitmproxy]=$url
  OHA_ARGS[mitmproxy]="-x http://127.0.0.1:$port --no-pre-lookup --cacert $work/mitm-ca.pem"
  CURL_ARGS[mitmproxy]="--proxy http://127.0.0.1:$port --cacert $work/mitm-ca.pem"
fi

if want litellm && [[ -z ${SKIP[litellm]:-} ]]; then
  port=$(free_port); mkdir -p "$work/litellm"
  # LiteLLM has no static resolve: api_base uses the IP (the upstream's certificate names it too).
  # It does not pass client headers on, so the chunk count goes in the model's extra_headers.
  cat >"$work/litellm.yaml" <<EOF
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: https://127.0.0.1:$up_port/v1
      api_key: sk-fake-upstream-key
      extra_headers: {"x-test-chunks": "$CHUNKS"}
litellm_settings:
  drop_params: true
  telemetry: false
  ssl_verify: $ca
EOF
  start litellm env -C "$work/litellm" -u DATABASE_URL HOME="$work/litellm" LITELLM_LOCAL_MODEL_COST_MAP=True \
    LITELLM_LOG=ERROR SSL_CERT_FILE="$ca" NO_DOCS=True DISABLE_ADMIN_UI=True PYTHONDONTWRITEBYTECODE=1 \
    "$BENCH_STATE/.venv/litellm/bin/litellm" --config "$work/litellm.yaml" --host 127.0.0.1 --port "$port" \
    --num_workers 1 --log_config "$here/peers/litellm-log.json"
  PG[litellm]=$LAST
  wait_port "$port" 120 "$LAST" || die "LiteLLM did not listen: $(tail -c 400 "$work/litellm.err")"
  URL[litellm]="http://127.0.0.1:$port/v1/chat/completions"
fi

# ---- check every row once: a 2xx with usage (JSON) / a usage chunk and [DONE] (SSE) ---------------
rows=()
for s in "${ALL[@]}"; do
  want "$s" || continue
  if [[ -n ${SKIP[$s]:-} ]]; then log "$s: skipped: ${SKIP[$s]}"; continue; fi
  for mode in nonstream stream; do
    # shellcheck disable=SC2086
    curl -sS --max-time 20 -o "$work/check-$s-$mode" -w '%{http_code}' ${CURL_ARGS[$s]:-} -H "x-test-chunks: $CHUNKS" \
      -H 'content-type: application/json' --data-binary "@$here/bodies/body-$mode.json" "${URL[$s]}" >"$work/check-$s-$mode.code" \
      2>"$work/check-$s-$mode.err" || die "$s ($mode): $(cat "$work/check-$s-$mode.err")"
    [[ $(cat "$work/check-$s-$mode.code") == 2* ]] || die "$s ($mode): HTTP $(cat "$work/check-$s-$mode.code"): $(head -c 300 "$work/check-$s-$mode")"
    if [[ $mode == stream ]]; then
      grep -q '^data: \[DONE\]' "$work/check-$s-$mode" && grep -q '"usage":{' "$work/check-$s-$mode" \
        || die "$s: the SSE answer has no usage chunk or no [DONE]"
    else
      grep -q '"completion_tokens"' "$work/check-$s-$mode" || die "$s: the JSON answer has no usage"
    fi
  done
  rows+=("$s")
done
# forward-full must really do every piece of trust work: read the check calls' receipts back.
if [[ -n $full_run ]]; then
  python3 "$here/peers_check.py" "http://$control" "$token" "$full_run" "http://$admin" \
    || die "forward-full did not do every piece of trust work (above)"
fi

# ---- measure -----------------------------------------------------------------------------------
# CPU ticks (user + system, children included) of a process group's live processes.
group_ticks() { # pgid
  local f line rest total=0
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    if [[ ${3} == "$TICKS_PG" ]]; then total=$((total + ${12} + ${13} + ${14} + ${15})); fi
  done
  echo "$total"
}
ticks_of() { TICKS_PG=$1 group_ticks; }
# Postgres's processes (the server is not ours: every backend, the WAL writer, the checkpointer).
pg_server_ticks() {
  local total=0 f line rest
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue
    [[ $line == *"(postgres)"* ]] || continue
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}
drain() { python3 "$here/drain_wait.py" "$admin"; } # seconds until control holds every receipt (at most 120)
table=$work/rows.tsv
: >"$table"
measure() { # row mode round
  local s=$1 mode=$2 r=$3 json=$work/$1-$2-$r.json p0=0 p1=0 c0=0 c1=0 q0=0 q1=0 lag=-
  # shellcheck disable=SC2206
  local args=(-c "$CONC" --no-tui --output-format json -m POST -T application/json -H "x-test-chunks: $CHUNKS"
    -D "$here/bodies/body-$mode.json" -t 30s ${OHA_ARGS[$s]:-} "${URL[$s]}")
  [[ $s == forward-full ]] && args=(--proxy-header "$full_auth" "${args[@]}")
  timeout $((WARMUP + 60)) "$oha" -z "${WARMUP}s" "${args[@]}" >/dev/null 2>&1 || true
  [[ $s == forward-full ]] && drain >/dev/null
  [[ -n ${PG[$s]} ]] && p0=$(ticks_of "${PG[$s]}")
  [[ $s == forward-full ]] && { c0=$(ticks_of "$control_pg"); q0=$(pg_server_ticks); }
  timeout $((DURATION + 60)) "$oha" -z "${DURATION}s" "${args[@]}" >"$json" 2>"$work/$s-$mode-$r.err" \
    || { log "  $s/$mode round $r: oha failed: $(head -c 300 "$work/$s-$mode-$r.err")"; return 0; }
  # Control's ingest is part of the call's cost: wait until it holds every receipt, then count.
  [[ $s == forward-full ]] && { lag=$(drain); c1=$(ticks_of "$control_pg"); q1=$(pg_server_ticks); }
  [[ -n ${PG[$s]} ]] && p1=$(ticks_of "${PG[$s]}")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$mode" "$r" "$json" "$((p1 - p0))" "$((c1 - c0))" "$((q1 - q0))" "$lag" >>"$table"
  log "  round $r $s/$mode: $(python3 -c 'import json,sys;d=json.load(open(sys.argv[1]));print("%.0f req/s" % d["summary"]["requestsPerSec"])' "$json")"
}
log "measuring ${rows[*]}: 2 modes x $ROUNDS rounds x $((DURATION + WARMUP)) s"
for ((r = 1; r <= ROUNDS; r++)); do
  order=("${rows[@]}")
  if ((r % 2 == 0)); then order=(); for ((i = ${#rows[@]} - 1; i >= 0; i--)); do order+=("${rows[i]}"); done; fi
  for s in "${order[@]}"; do for mode in nonstream stream; do measure "$s" "$mode" "$r"; done; done
done

# ---- SSE first byte with paced chunks ---------------------------------------------------------
ttfb=$work/ttfb.tsv
: >"$ttfb"
if ((TTFB_DELAY > 0)); then
  for s in direct sidecar forward-full nginx; do
    [[ " ${rows[*]} " == *" $s "* ]] || continue
    auth=()
    [[ $s == forward-full ]] && auth=(--proxy-header "$full_auth")
    # shellcheck disable=SC2086
    timeout 120 "$oha" -n 50 -c 1 --no-tui --output-format json -m POST -T application/json -H "x-test-chunks: $CHUNKS" \
      -H "x-test-chunk-delay-ms: $TTFB_DELAY" -D "$here/bodies/body-stream.json" -t 30s ${OHA_ARGS[$s]:-} \
      "${auth[@]}" "${URL[$s]}" \
      >"$work/ttfb-$s.json" 2>"$work/ttfb-$s.err" && printf '%s\t%s\n' "$s" "$work/ttfb-$s.json" >>"$ttfb"
  done
fi

# ---- memory with many open client connections ---------------------------------------------------
rss_line=
if ((RSS > 0)) && [[ -n $full_run ]]; then
  ulimit -n 65536 2>/dev/null || ulimit -n 8192 2>/dev/null || true
  log "opening $RSS client connections through forward-full"
  full_pid=$(pgrep -P "${PG[forward-full]}" | head -1)
  rss_line=$(FLEETFORGE_BENCH_PROXY_AUTH="$full_run:$full_token" python3 "$here/rss.py" "$full_pid" "$full_fwd" "$full_side" api.llm.test \
    "$up_port" "$work/full-ca.pem" "$RSS" | tr '\n' ' ') || rss_line="rss.py failed"
  python3 "$here/smaps.py" "$full_pid" 5 >"$work/smaps.txt" 2>&1 && sed 's/^/[peers] /' "$work/smaps.txt" >&2
fi

# ---- where the profiled row spends its CPU -----------------------------------------------------------
stamp=$(date +%Y-%m-%d-%H%M)
svg=
if ((PROFILE > 0)) && [[ -n ${PG[$PROFILE_ROW]:-} && " ${rows[*]} " == *" $PROFILE_ROW "* ]]; then
  prof_pid=$(pgrep -P "${PG[$PROFILE_ROW]}" | head -1)
  svg=$root/bench/results/profile-$PROFILE_ROW-$PROFILE_MODE-$stamp.svg
  log "profiling $PROFILE_ROW for $PROFILE s of ${MODES_LABEL[$PROFILE_MODE]} load"
  auth=()
  [[ $PROFILE_ROW == forward-full ]] && auth=(--proxy-header "$full_auth")
  # shellcheck disable=SC2086
  timeout $((PROFILE + 60)) "$oha" -z "$((PROFILE + 2))s" -c "$CONC" --no-tui -m POST -T application/json \
    -H "x-test-chunks: $CHUNKS" -D "$here/bodies/body-$PROFILE_MODE.json" -t 30s "${auth[@]}" ${OHA_ARGS[$PROFILE_ROW]:-} \
    "${URL[$PROFILE_ROW]}" >/dev/null 2>&1 &
  load=$!
  sleep 1
  timeout $((PROFILE + 60)) perf record -q -F 499 --call-graph dwarf,32768 -p "$prof_pid" -o "$work/perf.data" -- sleep "$PROFILE" \
    >"$work/perf.log" 2>&1 || log "perf record failed: $(tail -3 "$work/perf.log")"
  wait "$load" || true
  perf script -i "$work/perf.data" 2>/dev/null | "$BENCH_STATE/.tools/bin/inferno-collapse-perf" >"$work/perf.folded" \
    && "$BENCH_STATE/.tools/bin/inferno-flamegraph" --title "fleetforge-proxy $PROFILE_ROW, ${MODES_LABEL[$PROFILE_MODE]}, $stamp" \
      --width 1600 --minwidth 1 <"$work/perf.folded" >"$svg" || { log "flame graph failed"; svg=; }
fi

# ---- report --------------------------------------------------------------------------------------
out=$root/bench/results/peers-$stamp.md
versions="oha $("$oha" --version | head -1 | awk '{print $2}')"
command -v nginx >/dev/null && versions+=", $(nginx -v 2>&1 | sed 's/.*version: //')"
[[ -x $BENCH_STATE/.venv/mitmproxy/bin/mitmdump ]] && versions+=", mitmproxy $(grep -i '^mitmproxy==' "$here/peers/requirements-mitmproxy.txt" | cut -d= -f3)"
[[ -x $BENCH_STATE/.venv/litellm/bin/litellm ]] && versions+=", LiteLLM $(grep -o '==.*' "$here/peers/requirements-litellm.txt" | tail -1 | tr -d '=')"
skipped=""
for s in "${!SKIP[@]}"; do skipped+="$s: ${SKIP[$s]}; "; done
python3 "$here/peers_report.py" "$table" "$ttfb" "$(getconf CLK_TCK)" \
  "bench/peers.sh --duration $DURATION --rounds $ROUNDS --concurrency $CONC --chunks $CHUNKS --ttfb-delay-ms $TTFB_DELAY --rss $RSS${ONLY:+ --only $ONLY}" \
  "$versions" "$rss_line" "$skipped" "${svg:+$(basename "$svg")}" | tee "$out"
log "report: $out (raw oha JSON and logs: $work)"
