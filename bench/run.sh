#!/usr/bin/env bash
# bench/run.sh: one benchmark run of Portcullis against a bare hyper reverse proxy on
# this machine, printed as one markdown table (and written to bench/results/latest.md).
# What each row means and how it is measured: docs/BENCHMARKS.md.
#
# Environment (all optional):
#   BENCH_DURATION=10s   wrk duration of each measured row
#   BENCH_WARMUP=2s      wrk warm-up before each row (not measured)
#   BENCH_CONNECTIONS=32 BENCH_THREADS=2
#   BENCH_LOGINS=20      how many sign-ins the login latency is taken over
#   BENCH_BIG=1000000    sessions in the "big" store of the store-scaling rows
#   BENCH_SCALING=1      0: only the bare, public, signed-in and login rows (a quick run)
#   BENCH_PROFILE=DIR    also profile the public and signed-in rows: `perf record` on the
#                        gateway during an extra wrk run of BENCH_PROFILE_SECONDS (5), the
#                        data, folded stacks and (with inferno installed) flame graphs in DIR
#   PORTCULLIS_BENCH_POSTGRES_URL  default postgres://postgres@127.0.0.1:5432/test
#   PORTCULLIS_BENCH_REDIS_URL     default redis://127.0.0.1:6379
#   CARGO_TARGET_DIR     where cargo builds (default: target/ in the repository)
#   BENCH_QUIET_FOR="cargo rustc"  on a shared machine: before each measured row, wait
#                        until no process of these names runs, and measure a row again
#                        (up to 5 times) when one ran during it
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${BENCH_DURATION:-10s}
WARMUP=${BENCH_WARMUP:-2s}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
THREADS=${BENCH_THREADS:-2}
LOGINS=${BENCH_LOGINS:-20}
SMALL=1000
BIG=${BENCH_BIG:-1000000}
SCALING=${BENCH_SCALING:-1}
PROFILE_DIR=${BENCH_PROFILE:-}
PROFILE_SECONDS=${BENCH_PROFILE_SECONDS:-5}
ROTATION=1000
PG_URL=${PORTCULLIS_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${PORTCULLIS_BENCH_REDIS_URL:-redis://127.0.0.1:6379}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=$ROOT/bench/results/latest.md
CLK_TCK=$(getconf CLK_TCK)
QUIET_FOR=${BENCH_QUIET_FOR:-}

log() { printf 'bench: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------------------
# The exact command, for the results: the settings that were given, then the script.
# (Passwords in URLs are masked.)
describe_command() {
  local parts=() name
  for name in BENCH_DURATION BENCH_WARMUP BENCH_CONNECTIONS BENCH_THREADS BENCH_LOGINS \
    BENCH_BIG BENCH_SCALING BENCH_PROFILE BENCH_QUIET_FOR PORTCULLIS_BENCH_POSTGRES_URL PORTCULLIS_BENCH_REDIS_URL \
    CARGO_TARGET_DIR; do
    if [[ -n ${!name+x} ]]; then
      parts+=("$name=$(printf '%q' "$(sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"${!name}")")")
    fi
  done
  parts+=("bench/run.sh")
  echo "${parts[*]}"
}
COMMAND=$(describe_command)

# ---------------------------------------------------------------------------------------
# Processes and temporary state, all undone on exit.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
PIDS=()
PG_PREFIXES=()
REDIS_PREFIXES=()

cleanup() {
  local pid prefix
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  [[ ${#PG_PREFIXES[@]} -eq 0 && ${#REDIS_PREFIXES[@]} -eq 0 ]] ||
    log "removing the seeded tables and keys"
  for prefix in "${PG_PREFIXES[@]}"; do
    drop_postgres_prefix "$prefix" || log "could not drop the PostgreSQL tables ${prefix}_*"
  done
  for prefix in "${REDIS_PREFIXES[@]}"; do
    drop_redis_prefix "$prefix" || log "could not remove the Redis keys ${prefix}:*"
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Starts a process in the background with its output in $WORK/NAME.log; sets STARTED_PID.
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

# Takes an exited (and waited for) process off the list of those to stop on exit.
forget() {
  local pid=$1 kept=() p
  for p in "${PIDS[@]}"; do
    [[ $p == "$pid" ]] || kept+=("$p")
  done
  PIDS=("${kept[@]}")
}

stop() {
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  forget "$1"
}

# A loopback port nobody listens on, below the ephemeral range (so that no outgoing
# connection takes it meanwhile), never handed out twice in one run.
USED_PORTS=" "
free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 12000))
    [[ $USED_PORTS == *" $port "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      USED_PORTS+="$port "
      echo "$port"
      return
    fi
  done
}

# Waits until URL answers with status EXPECTED while process PID lives.
wait_for() {
  local url=$1 expected=$2 pid=$3 name=$4 i
  for i in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || {
      cat "$WORK/$name.log" >&2
      die "$name exited during start-up (log above)"
    }
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "$url" || true) == "$expected" ]]; then
      return
    fi
    sleep 0.1
  done
  cat "$WORK/$name.log" >&2
  die "$name did not answer $expected at $url within 30 s (log above)"
}

# ---------------------------------------------------------------------------------------
# Tools and binaries.
if ! command -v wrk >/dev/null; then
  log "installing wrk from Debian"
  SUDO=()
  [[ $(id -u) == 0 ]] || SUDO=(sudo)
  "${SUDO[@]}" apt-get install -y wrk >/dev/null ||
    { "${SUDO[@]}" apt-get update >/dev/null && "${SUDO[@]}" apt-get install -y wrk >/dev/null; } ||
    die "could not install wrk"
fi
for tool in curl awk sed sort; do
  command -v "$tool" >/dev/null || die "$tool is needed"
done

log "building release binaries in $TARGET_DIR (takes minutes the first time)"
(cd "$ROOT" && cargo build --release -p portcullis-cli -p portcullis-bench)
# The run uses its own copies: a target directory shared with another checkout may get
# other builds of the same binaries while this run still starts processes.
BIN=$WORK/bin
mkdir "$BIN"
for binary in portcullis bare-proxy upstream seed dpop-proofs; do
  cp "$TARGET_DIR/release/$binary" "$BIN/"
done

# ---------------------------------------------------------------------------------------
# The gateway runs with no PORTCULLIS_* variable but those given here: it refuses
# unknown ones, and the caller's (PORTCULLIS_BENCH_*, a developer's own settings) are
# not settings of this run.
SCRUB=(env)
while IFS= read -r name; do
  SCRUB+=(-u "$name")
done < <(compgen -e | grep '^PORTCULLIS_' || true)

UPSTREAM_PORT=$(free_port)
BARE_PORT=$(free_port)
BARE_CORE_PORT=$(free_port)
IDP_PORT=$(free_port)
GATEWAY_PORT=$(free_port)
ISSUER="http://127.0.0.1:$IDP_PORT"
CLIENT_ID=bench
CLIENT_SECRET=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_')
UPSTREAM_BODY="hello from upstream"

cat >"$WORK/idp.toml" <<EOF
issuer = "$ISSUER"
listen = "127.0.0.1:$IDP_PORT"
store = "sqlite:$WORK/idp.db"
# No access token falls due for refresh during a run.
access_token_ttl = "1h"
id_token_ttl = "1h"

[[clients]]
id = "$CLIENT_ID"
secret = "$CLIENT_SECRET"
redirect_uris = ["http://127.0.0.1:$GATEWAY_PORT/auth/callback"]

# A machine client, for the bearer-token row (builds whose dev provider knows it).
[[clients]]
id = "bench-machine"
secret = "$CLIENT_SECRET"
resources = ["http://127.0.0.1:$GATEWAY_PORT/api"]
scopes = ["orders:read"]

[[users]]
username = "alice"
password = "alice"
email = "alice@example.com"
name = "Alice Example"
EOF

cat >"$WORK/gateway.toml" <<EOF
client_id = "$CLIENT_ID"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
public_paths = ["/public/*"]
EOF

# The settings every gateway of this run shares (the store, secret and port differ).
gateway_env() {
  local port=$1 store=$2 prefix=$3
  echo "PORTCULLIS_LISTEN=127.0.0.1:$port"
  echo "PORTCULLIS_ISSUER=$ISSUER"
  echo "PORTCULLIS_CLIENT_SECRET=$CLIENT_SECRET"
  echo "PORTCULLIS_SECRET=$(head -c 32 /dev/urandom | base64)"
  echo "PORTCULLIS_STORE=$store"
  echo "PORTCULLIS_STORE_PREFIX=$prefix"
}

# Whether `portcullis check-config` accepts the base settings plus VARIABLE=VALUE.
config_accepts() {
  local vars
  mapfile -t vars < <(gateway_env "$GATEWAY_PORT" "sqlite:$WORK/check.db" portcullis)
  "${SCRUB[@]}" "${vars[@]}" "$@" "$BIN/portcullis" check-config --config "$WORK/gateway.toml" \
    >"$WORK/check-config.log" 2>&1
}

config_accepts || {
  cat "$WORK/check-config.log" >&2
  die "the gateway's base configuration is refused (above)"
}
NOTES=()
# Machine clients' tokens on /api/* ([[bearer]]), when this build has them.
BEARER=false
cp "$WORK/gateway.toml" "$WORK/gateway-base.toml"
cat >>"$WORK/gateway.toml" <<EOF

[[bearer]]
issuer = "default"
audiences = ["http://127.0.0.1:$GATEWAY_PORT/api"]
paths = ["/api/*"]
required_scopes = ["orders:read"]
EOF
if config_accepts; then
  BEARER=true
else
  cp "$WORK/gateway-base.toml" "$WORK/gateway.toml"
  NOTES+=("This build has no \`[[bearer]]\`: no bearer-token row.")
fi
# Metrics are on in the measured configuration once they exist (docs/BENCHMARKS.md).
METRICS=false
if config_accepts "PORTCULLIS_METRICS_LISTEN=127.0.0.1:1"; then
  METRICS=true
else
  NOTES+=("This build has no \`metrics.listen\`: measured without metrics.")
fi
CACHE_OFF=()
if config_accepts PORTCULLIS_SESSION_CACHE_ENTRIES=0; then
  CACHE_OFF=(PORTCULLIS_SESSION_CACHE_ENTRIES=0)
else
  NOTES+=("This build has no session cache (\`session.cache_entries\` unknown): the store-scaling rows ran without \`PORTCULLIS_SESSION_CACHE_ENTRIES=0\`, every request reads the store.")
  log "note: session.cache_entries is not a setting of this build; the store-scaling rows run without it"
fi

# Starts a gateway on STORE with PREFIX and any extra VAR=VALUE; sets GATEWAY_PID.
start_gateway() {
  local name=$1 port=$2 store=$3 prefix=$4 vars
  shift 4
  mapfile -t vars < <(gateway_env "$port" "$store" "$prefix")
  if $METRICS; then
    vars+=("PORTCULLIS_METRICS_LISTEN=127.0.0.1:$(free_port)")
  fi
  start "$name" "${SCRUB[@]}" "${vars[@]}" "$@" \
    "$BIN/portcullis" serve --config "$WORK/gateway.toml"
  GATEWAY_PID=$STARTED_PID
  wait_for "http://127.0.0.1:$port/readyz" 200 "$GATEWAY_PID" "$name"
}

log "starting the upstream, the bare proxy, the identity provider and the gateway"
start upstream "$BIN/upstream" --listen "127.0.0.1:$UPSTREAM_PORT"
wait_for "http://127.0.0.1:$UPSTREAM_PORT/" 200 "$STARTED_PID" upstream
start bare-proxy "$BIN/bare-proxy" --listen "127.0.0.1:$BARE_PORT" \
  --upstream "http://127.0.0.1:$UPSTREAM_PORT"
BARE_PID=$STARTED_PID
wait_for "http://127.0.0.1:$BARE_PORT/" 200 "$BARE_PID" bare-proxy
# The same proxy as Portcullis serves: one single-threaded runtime per core.
start bare-proxy-per-core "$BIN/bare-proxy" --listen "127.0.0.1:$BARE_CORE_PORT" \
  --upstream "http://127.0.0.1:$UPSTREAM_PORT" --shape per-core
BARE_CORE_PID=$STARTED_PID
wait_for "http://127.0.0.1:$BARE_CORE_PORT/" 200 "$BARE_CORE_PID" bare-proxy-per-core
start idp "${SCRUB[@]}" "$BIN/portcullis" idp --config "$WORK/idp.toml"
wait_for "$ISSUER/.well-known/openid-configuration" 200 "$STARTED_PID" idp
# wrk, on loopback, asks /auth/verify as a trusted front proxy would.
start_gateway gateway "$GATEWAY_PORT" "sqlite:$WORK/gateway.db" portcullis \
  PORTCULLIS_PROXY_TRUSTED_PROXIES=127.0.0.1
MAIN_GATEWAY_PID=$GATEWAY_PID
GATEWAY="http://127.0.0.1:$GATEWAY_PORT"

# ---------------------------------------------------------------------------------------
# Sign-in through the real flow, as a browser would: the gateway's /auth/login, the
# provider's form, the credentials, back to /auth/callback, on to the app.
html_unescape() {
  sed -e 's/&quot;/"/g' -e "s/&#x27;/'/g" -e 's/&lt;/</g' -e 's/&gt;/>/g' -e 's/&amp;/\&/g'
}

# Signs alice in with cookie jar JAR; fails unless the app's page comes back.
sign_in() {
  local jar=$1 form fields=() field name value final
  form=$(curl -sS -f -L -c "$jar" -b "$jar" -H 'Accept: text/html' "$GATEWAY/auth/login")
  while IFS= read -r field; do
    name=$(sed -E 's/.*name="([^"]*)".*/\1/' <<<"$field" | html_unescape)
    value=$(sed -E 's/.*value="([^"]*)".*/\1/' <<<"$field" | html_unescape)
    fields+=(--data-urlencode "$name=$value")
  done < <(grep -oE '<input type="hidden" name="[^"]*" value="[^"]*">' <<<"$form" || true)
  [[ ${#fields[@]} -gt 0 ]] || die "the provider's sign-in form has no fields: $form"
  final=$(curl -sS -L -c "$jar" -b "$jar" -H 'Accept: text/html' "${fields[@]}" \
    --data-urlencode username=alice --data-urlencode password=alice \
    -w '\n%{http_code} %{url_effective}' "$ISSUER/authorize")
  [[ $final == "$UPSTREAM_BODY"*"200 $GATEWAY/" ]] || die "sign-in did not reach the app: $final"
}

now_ns() { date +%s%N; }

log "signing in $LOGINS times through the provider's form (login latency)"
LOGIN_MS=()
for i in $(seq 1 "$LOGINS"); do
  jar="$WORK/jar-$i.txt"
  t0=$(now_ns)
  sign_in "$jar"
  t1=$(now_ns)
  LOGIN_MS+=("$(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.1f", d / 1e6 }')")
done
COOKIE=$(awk '$6 == "portcullis" { print $7 }' "$WORK/jar-1.txt")
[[ -n $COOKIE ]] || die "no session cookie after signing in"
[[ $(curl -s -o /dev/null -w '%{http_code}' -b "portcullis=$COOKIE" "$GATEWAY/") == 200 ]] ||
  die "the session cookie does not reach the app"
[[ $(curl -s -o /dev/null -w '%{http_code}' "$GATEWAY/") != 200 ]] ||
  die "the gateway lets a request without a session through"

# Percentile P (nearest rank) of the numbers on stdin.
percentile() {
  sort -n | awk -v p="$1" '{ v[NR] = $1 } END { r = int((p * NR + 99) / 100); if (r < 1) r = 1; print v[r] }'
}
LOGIN_P50=$(printf '%s\n' "${LOGIN_MS[@]}" | percentile 50)
LOGIN_P99=$(printf '%s\n' "${LOGIN_MS[@]}" | percentile 99)

# ---------------------------------------------------------------------------------------
# Measurements.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
thousands() { sed -E ':a; s/([0-9])([0-9]{3})($|[^0-9])/\1,\2\3/; ta'; }

TABLE=()
BARE_RPS=""

# BENCH_QUIET_FOR: whether a process of those names runs.
others_running() {
  local name
  for name in $QUIET_FOR; do
    pgrep -x "$name" >/dev/null && return 0
  done
  return 1
}

wait_until_quiet() {
  while others_running; do
    log "waiting until no $QUIET_FOR process runs"
    sleep 10
  done
}

# Runs wrk against URL, served by process PID, and appends the table row LABEL. COOKIES
# is a file of session ids to send in rotation, or empty; more wrk options may follow.
# SCRIPT_ARGS (an array, usually empty) replaces the script's arguments of the measured
# run, WARM_SCRIPT_ARGS those of the warm-up (the DPoP row: proofs are used once).
# Sets ROW_RPS.
SCRIPT_ARGS=()
WARM_SCRIPT_ARGS=()
measure() {
  local label=$1 pid=$2 url=$3 note=$4 cookies=$5
  shift 5
  local out=$WORK/wrk.out script_args=() warm_args=() before after line attempt watcher
  local requests duration non200 errors p50 p99 cpu rss pct
  [[ -z $cookies ]] || script_args=(-- "$cookies")
  [[ ${#SCRIPT_ARGS[@]} -eq 0 ]] || script_args=(-- "${SCRIPT_ARGS[@]}")
  warm_args=("${script_args[@]}")
  [[ ${#WARM_SCRIPT_ARGS[@]} -eq 0 ]] || warm_args=(-- "${WARM_SCRIPT_ARGS[@]}")
  for attempt in 1 2 3 4 5; do
    wait_until_quiet
    log "measuring: $label"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$ROOT/bench/wrk.lua" "$@" \
      "$url" "${warm_args[@]}" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed (warm-up of $label)"; }
    grep -q ' non200=0 socket_errors=0 ' "$out" ||
      { cat "$out" >&2; die "$label: the warm-up got errors or answers other than 200"; }
    rm -f "$WORK/disturbed"
    if [[ -n $QUIET_FOR ]]; then
      (while sleep 1; do others_running && touch "$WORK/disturbed"; done) &
      watcher=$!
      PIDS+=("$watcher")
    fi
    before=$(cpu_ticks "$pid")
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$ROOT/bench/wrk.lua" "$@" \
      "$url" "${script_args[@]}" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($label)"; }
    after=$(cpu_ticks "$pid")
    rss=$(rss_kib "$pid")
    [[ -z $QUIET_FOR ]] || stop "$watcher"
    [[ -e $WORK/disturbed && $attempt -lt 5 ]] || break
    log "a $QUIET_FOR process ran during the row: measuring it again"
  done
  [[ ! -e $WORK/disturbed ]] || NOTES+=("$label: a $QUIET_FOR process ran during the row (5 attempts).")
  line=$(grep '^BENCH ' "$out") || { cat "$out" >&2; die "$label: no summary from wrk.lua"; }
  read -r requests duration non200 errors p50 p99 < <(sed -E 's/[a-z0-9_]+=//g; s/^BENCH //' <<<"$line")
  if [[ $non200 != 0 || $errors != 0 ]]; then
    cat "$out" >&2
    die "$label: $non200 answers other than 200 and $errors socket errors: the row is not valid"
  fi
  [[ $requests -gt 0 ]] || die "$label: no requests completed"
  ROW_RPS=$(awk -v r="$requests" -v d="$duration" 'BEGIN { printf "%d", r / (d / 1e6) }')
  cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v r="$requests" 'BEGIN { printf "%.0f", t * 1e6 / hz / r }')
  if [[ -n $BARE_RPS ]]; then
    pct=$(awk -v a="$ROW_RPS" -v b="$BARE_RPS" 'BEGIN { printf "%.0f%%", 100 * a / b }')
  else
    pct="100%"
  fi
  TABLE+=("| $label | $(thousands <<<"$ROW_RPS") | $pct | $(awk -v v="$p50" 'BEGIN { printf "%.2f", v / 1000 }') | $(awk -v v="$p99" 'BEGIN { printf "%.2f", v / 1000 }') | $cpu | $(awk -v k="$rss" 'BEGIN { printf "%.0f", k / 1024 }') | $note |")
}

# BENCH_PROFILE: `perf record` (DWARF call graphs: release builds keep no frame pointers)
# on process PID while wrk loads URL, not measured; the flame graph is NAME.svg.
profile_row() {
  local name=$1 pid=$2 url=$3
  shift 3
  [[ -n $PROFILE_DIR ]] || return 0
  command -v perf >/dev/null || die "BENCH_PROFILE needs perf (Debian: linux-perf)"
  mkdir -p "$PROFILE_DIR"
  wait_until_quiet
  log "profiling: $name (${PROFILE_SECONDS}s)"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d$((PROFILE_SECONDS + 2))s -s "$ROOT/bench/wrk.lua" "$@" \
    "$url" >/dev/null 2>&1 &
  local load=$!
  perf record --call-graph dwarf,16384 -F 499 -p "$pid" -o "$PROFILE_DIR/$name.data" \
    -- sleep "$PROFILE_SECONDS" 2>/dev/null >&2 || log "perf record failed for $name"
  wait "$load" || true
  perf script -i "$PROFILE_DIR/$name.data" 2>/dev/null >"$PROFILE_DIR/$name.perf" || true
  if command -v inferno-collapse-perf >/dev/null; then
    inferno-collapse-perf <"$PROFILE_DIR/$name.perf" >"$PROFILE_DIR/$name.folded"
    inferno-flamegraph --title "$name" <"$PROFILE_DIR/$name.folded" >"$PROFILE_DIR/$name.svg"
    log "flame graph: $PROFILE_DIR/$name.svg"
  else
    log "no inferno-collapse-perf (cargo install inferno): $PROFILE_DIR/$name.perf only"
  fi
}

measure "bare hyper reverse proxy, one multi-threaded runtime (reference)" "$BARE_PID" "http://127.0.0.1:$BARE_PORT/" "" ""
BARE_MULTI_RPS=$ROW_RPS
BARE_RPS=$ROW_RPS
measure "bare hyper reverse proxy, a single-threaded runtime per core (reference)" "$BARE_CORE_PID" "http://127.0.0.1:$BARE_CORE_PORT/" "" ""
BARE_CORE_RPS=$ROW_RPS
stop "$BARE_CORE_PID"
# "vs bare" below is against the faster reference shape.
BARE_RPS=$(( BARE_MULTI_RPS > BARE_CORE_RPS ? BARE_MULTI_RPS : BARE_CORE_RPS ))
measure "Portcullis, public path" "$MAIN_GATEWAY_PID" "$GATEWAY/public/" "SQLite; no cookie" ""
measure "Portcullis, signed in" "$MAIN_GATEWAY_PID" "$GATEWAY/" "SQLite; one real session" "" \
  -H "Cookie: portcullis=$COOKIE"
SIGNED_IN_RPS=$ROW_RPS
NOTES+=("\`vs bare\` is against the faster reference shape ($(thousands <<<"$BARE_MULTI_RPS") req/s multi-threaded, $(thousands <<<"$BARE_CORE_RPS") req/s per core). Signed in: $(awk -v a="$SIGNED_IN_RPS" -v b="$BARE_MULTI_RPS" 'BEGIN { printf "%.0f%%", 100 * a / b }') of the multi-threaded reference, $(awk -v a="$SIGNED_IN_RPS" -v b="$BARE_CORE_RPS" 'BEGIN { printf "%.0f%%", 100 * a / b }') of the per-core one.")
measure "Portcullis, forward-auth" "$MAIN_GATEWAY_PID" "$GATEWAY/auth/verify" \
  "SQLite; one real session; GET /auth/verify as nginx asks it: a 200 with the identity headers, no upstream" "" \
  -H "Cookie: portcullis=$COOKIE" -H "X-Original-URI: /app?x=1" -H "X-Original-Method: GET"
if $BEARER; then
  TOKEN=$(curl -sS -u "bench-machine:$CLIENT_SECRET" -d grant_type=client_credentials "$ISSUER/token" |
    sed -nE 's/.*"access_token":"([^"]+)".*/\1/p')
  [[ -n $TOKEN ]] || die "the dev provider gave the machine client no access token"
  [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$GATEWAY/api/") == 200 ]] ||
    die "the machine client's token does not reach the app"
  at=$(( ${#TOKEN} - 20 ))
  swap=A; [[ ${TOKEN:at:1} == A ]] && swap=B
  [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${TOKEN:0:at}$swap${TOKEN:at+1}" "$GATEWAY/api/") == 401 ]] ||
    die "the gateway lets a tampered token through"
  measure "Portcullis, bearer token" "$MAIN_GATEWAY_PID" "$GATEWAY/api/" \
    "SQLite; a client-credentials JWT (RS256), verified once, then found by its SHA-256" "" \
    -H "Authorization: Bearer $TOKEN"
  BEARER_RPS=$ROW_RPS
  # DPoP: a fresh proof per request, signed beforehand (wrk cannot sign), as many as
  # the bearer row's rate could use (a DPoP request does all a bearer one does, and
  # more), each sent once: the gateway writes every proof to its replay cache.
  seconds() { sed -E 's/s$//' <<<"$1"; }
  warm_count=$(( BEARER_RPS * $(seconds "$WARMUP") + 1000 ))
  run_count=$(( BEARER_RPS * $(seconds "$DURATION") + 1000 ))
  log "signing $((warm_count + run_count)) DPoP proofs for the DPoP row"
  "$BIN/dpop-proofs" --issuer "$ISSUER" --client bench-machine --secret "$CLIENT_SECRET" \
    --htu "$GATEWAY/api/" --count "$run_count" --token "$WORK/dpop-token" \
    --proofs "$WORK/dpop-run" || die "dpop-proofs failed"
  DPOP_TOKEN=$(cat "$WORK/dpop-token")
  # The warm-up gets a token and proofs of its own (signed last, used first).
  "$BIN/dpop-proofs" --issuer "$ISSUER" --client bench-machine --secret "$CLIENT_SECRET" \
    --htu "$GATEWAY/api/" --count "$warm_count" --token "$WORK/dpop-token-warm" \
    --proofs "$WORK/dpop-warm" || die "dpop-proofs failed"
  SCRIPT_ARGS=("$WORK/dpop-run" dpop "$DPOP_TOKEN" "$THREADS")
  WARM_SCRIPT_ARGS=("$WORK/dpop-warm" dpop "$(cat "$WORK/dpop-token-warm")" "$THREADS")
  measure "Portcullis, DPoP-bound token" "$MAIN_GATEWAY_PID" "$GATEWAY/api/" \
    "SQLite; a DPoP-bound client-credentials JWT, cached; a fresh proof per request: verified (ES256) and written to the store's replay cache" ""
  SCRIPT_ARGS=()
  WARM_SCRIPT_ARGS=()
  DPOP_RPS=$ROW_RPS
  NOTES+=("Bearer token: $(awk -v a="$BEARER_RPS" -v b="$SIGNED_IN_RPS" 'BEGIN { printf "%.0f%%", 100 * a / b }') of the signed-in row. DPoP: $(awk -v a="$DPOP_RPS" -v b="$BEARER_RPS" 'BEGIN { printf "%.0f%%", 100 * a / b }') of the bearer row: the proof's signature check and its replay-cache write (SQLite) on every request.")
fi
profile_row bare "$BARE_PID" "http://127.0.0.1:$BARE_PORT/"
profile_row public "$MAIN_GATEWAY_PID" "$GATEWAY/public/"
profile_row signed-in "$MAIN_GATEWAY_PID" "$GATEWAY/" -H "Cookie: portcullis=$COOKIE"
TABLE+=("| login, whole flow ($LOGINS sign-ins, curl) | — | — | $LOGIN_P50 | $LOGIN_P99 | — | — | GET /auth/login → provider form → POST credentials (argon2id) → /auth/callback → app |")
stop "$MAIN_GATEWAY_PID"

# ---------------------------------------------------------------------------------------
# Store scaling: the signed-in row with $ROTATION cookies in rotation, cache off, on a
# store holding $SMALL and then $BIG sessions.
random_prefix() { echo "bench_$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }

drop_postgres_prefix() {
  psql "$PG_URL" -v ON_ERROR_STOP=1 -q >/dev/null <<EOF
DO \$\$
DECLARE t text;
BEGIN
  FOR t IN SELECT tablename FROM pg_tables
           WHERE schemaname = current_schema() AND tablename LIKE '$1\_%'
  LOOP
    EXECUTE format('DROP TABLE IF EXISTS %I CASCADE', t);
  END LOOP;
END
\$\$;
EOF
}

drop_redis_prefix() {
  redis-cli -u "$REDIS_URL" --scan --pattern "$1:*" |
    xargs -r -d '\n' -n 1000 redis-cli -u "$REDIS_URL" UNLINK >/dev/null
}

count_label() { thousands <<<"$1"; }

# Seeds COUNT sessions into STORE under PREFIX, runs a gateway on it and measures.
scaling_row() {
  local engine=$1 store=$2 prefix=$3 count=$4 cookies=$WORK/cookies-$3.txt port note seeder
  log "seeding $(count_label "$count") sessions into $engine"
  # In the background, so that an interrupt is handled at once, not after the seeding.
  "$BIN/seed" --store "$store" --prefix "$prefix" --count "$count" --cookies "$cookies" \
    --write "$ROTATION" --issuer "$ISSUER" 2> >(sed -u 's/^/  /' >&2) &
  seeder=$!
  PIDS+=("$seeder")
  if ! wait "$seeder"; then
    forget "$seeder"
    die "seeding $engine failed"
  fi
  forget "$seeder"
  port=$(free_port)
  start_gateway "gateway-$prefix" "$port" "$store" "$prefix" "${CACHE_OFF[@]}"
  note="cache off; $(count_label "$ROTATION") cookies in rotation"
  measure "$engine, $(count_label "$count") sessions" "$GATEWAY_PID" "http://127.0.0.1:$port/" \
    "$note" "$cookies"
  stop "$GATEWAY_PID"
}

# The change from the $SMALL row to the $BIG row of ENGINE, for the last row's note.
annotate_change() {
  local engine=$1 small=$2 big=$3 last=$((${#TABLE[@]} - 1))
  local change
  change=$(awk -v s="$small" -v b="$big" 'BEGIN { printf "%+.1f%% req/s vs %s", 100 * (b - s) / s, "'"$(count_label "$SMALL")"'" }')
  TABLE[last]="${TABLE[last]% |}; $change |"
}

scale_engine() {
  local engine=$1 store_small=$2 store_big=$3 prefix_small=$4 prefix_big=$5 small_rps
  scaling_row "$engine" "$store_small" "$prefix_small" "$SMALL"
  small_rps=$ROW_RPS
  scaling_row "$engine" "$store_big" "$prefix_big" "$BIG"
  annotate_change "$engine" "$small_rps" "$ROW_RPS"
}

skip_engine() {
  TABLE+=("| $1 | — | — | — | — | — | — | skipped: $2 |")
  log "skipping $1: $2"
}

if [[ $SCALING == 0 ]]; then
  NOTES+=("BENCH_SCALING=0: the store-scaling rows were not run.")
else
scale_engine SQLite "sqlite:$WORK/small.db" "sqlite:$WORK/big.db" portcullis portcullis

if ! command -v psql >/dev/null; then
  skip_engine PostgreSQL "psql not found (needed to drop the tables afterwards)"
elif ! psql "$PG_URL" -q -c 'SELECT 1' >/dev/null 2>&1; then
  skip_engine PostgreSQL "not reachable at $(sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$PG_URL")"
else
  small_prefix=$(random_prefix)
  big_prefix=$(random_prefix)
  PG_PREFIXES+=("$small_prefix" "$big_prefix")
  scale_engine PostgreSQL "$PG_URL" "$PG_URL" "$small_prefix" "$big_prefix"
fi

if ! command -v redis-cli >/dev/null; then
  skip_engine Redis "redis-cli not found (needed to remove the keys afterwards)"
elif [[ $(redis-cli -u "$REDIS_URL" PING 2>/dev/null) != PONG ]]; then
  skip_engine Redis "not reachable at $(sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$REDIS_URL")"
else
  small_prefix=$(random_prefix)
  big_prefix=$(random_prefix)
  REDIS_PREFIXES+=("$small_prefix" "$big_prefix")
  scale_engine Redis "$REDIS_URL" "$REDIS_URL" "$small_prefix" "$big_prefix"
fi
fi

# ---------------------------------------------------------------------------------------
# The table.
report() {
  echo "Portcullis benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  echo
  echo "- machine: $(nproc) CPUs, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/^MemTotal/ { printf "%.0f GiB RAM", $2 / 1048576 }' /proc/meminfo); wrk and every server share it"
  echo "- command: \`$COMMAND\`"
  echo "- load: \`wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency\` after a $WARMUP warm-up, every counted response a 200"
  local note
  for note in "${NOTES[@]}"; do
    echo "- $note"
  done
  echo
  echo "| row | req/s | vs bare | p50 ms | p99 ms | CPU µs/req | RSS MiB | notes |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
  printf '%s\n' "${TABLE[@]}"
}
mkdir -p "$(dirname "$RESULTS")"
report | tee "$RESULTS"
log "written to ${RESULTS#"$ROOT"/}"
