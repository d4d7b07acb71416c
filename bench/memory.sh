#!/usr/bin/env bash
# bench/memory.sh: bytes per stored session (SQLite file, PostgreSQL tables, Redis
# memory) and per cached session (the gateway's RSS growth while the cache fills), for
# docs/BENCHMARKS.md. Seeds N sessions (default 100,000) through the Store trait with
# the bench crate's `seed`, as bench/run.sh does; everything on 127.0.0.1, removed at exit.
#
#   bench/memory.sh                 # N=100000
#   BENCH_MEMORY_SESSIONS=20000 bench/memory.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${BENCH_MEMORY_SESSIONS:-100000}
PG_URL=${PORTCULLIS_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${PORTCULLIS_BENCH_REDIS_URL:-redis://127.0.0.1:6379}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
TMP=$(mktemp -d)
PIDS=()
PREFIX=mem$(head -c6 /dev/urandom | od -An -tx1 | tr -d ' \n')
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  psql -q "$PG_URL" -c "DO \$\$ DECLARE t text; BEGIN FOR t IN SELECT tablename FROM pg_tables WHERE tablename LIKE '${PREFIX}\_%' LOOP EXECUTE 'DROP TABLE IF EXISTS ' || t || ' CASCADE'; END LOOP; END \$\$;" >/dev/null 2>&1 || true
  redis-cli -u "$REDIS_URL" --scan --pattern "${PREFIX}:*" 2>/dev/null | xargs -r -n 500 redis-cli -u "$REDIS_URL" UNLINK >/dev/null 2>&1 || true
  rm -rf "$TMP"
}
trap cleanup EXIT
cargo build --release -q -p portcullis-cli -p portcullis-bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
seed() { "$BIN/seed" --store "$1" --prefix "$PREFIX" --count "$N" --cookies "$TMP/cookies-$2" --write "$N" >/dev/null 2>&1; }
echo "| what | per session |"
echo "|---|---:|"

# Stored: SQLite.
seed "sqlite:$TMP/s.db" sqlite
sqlite_bytes=$(( $(stat -c %s "$TMP/s.db") + $(stat -c %s "$TMP/s.db-wal" 2>/dev/null || echo 0) ))
echo "| stored, SQLite (file + WAL) | $(( sqlite_bytes / N )) B |"

# Stored: PostgreSQL (tables and their indexes).
if psql -q "$PG_URL" -c 'select 1' >/dev/null 2>&1; then
  seed "$PG_URL" pg
  pg_bytes=$(psql -tA "$PG_URL" -c "SELECT sum(pg_total_relation_size(quote_ident(tablename))) FROM pg_tables WHERE tablename IN ('${PREFIX}_sessions','${PREFIX}_users')")
  echo "| stored, PostgreSQL (sessions + users, with indexes) | $(( pg_bytes / N )) B |"
fi

# Stored: Redis (used_memory growth).
if redis-cli -u "$REDIS_URL" ping >/dev/null 2>&1; then
  before=$(redis-cli -u "$REDIS_URL" INFO memory | awk -F: '/^used_memory:/{print $2}' | tr -d '\r')
  seed "$REDIS_URL" redis
  after=$(redis-cli -u "$REDIS_URL" INFO memory | awk -F: '/^used_memory:/{print $2}' | tr -d '\r')
  echo "| stored, Redis (used_memory growth, every key and index) | $(( (after - before) / N )) B |"
fi

# Cached: the gateway's RSS before and after every session went through the cache once.
up=$(free_port); gw=$(free_port)
"$BIN/upstream" --listen "127.0.0.1:$up" >/dev/null 2>&1 & PIDS+=($!)
env -i PATH="$PATH" PORTCULLIS_ISSUER=http://127.0.0.1:9 PORTCULLIS_CLIENT_ID=app \
  PORTCULLIS_LISTEN="127.0.0.1:$gw" PORTCULLIS_UPSTREAM="http://127.0.0.1:$up" \
  PORTCULLIS_STORE="sqlite:$TMP/s.db" PORTCULLIS_STORE_PREFIX="$PREFIX" \
  PORTCULLIS_SECRET="$(head -c32 /dev/urandom | base64)" PORTCULLIS_LOG=warn \
  "$BIN/portcullis" serve >/dev/null 2>&1 & GW=$!; PIDS+=("$GW")
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$gw/healthz" && break; sleep 0.1; done
rss() { awk '/^VmRSS:/{print $2}' "/proc/$GW/status"; }
# Warm everything that is not the cache (pools, buffers) on a few sessions first.
head -100 "$TMP/cookies-sqlite" > "$TMP/warm"
wrk -t2 -c32 -d2s -s "$ROOT/bench/wrk.lua" "http://127.0.0.1:$gw/" -- "$TMP/warm" >/dev/null
before=$(rss)
# Two passes over all N cookies (each thread walks half), so every session is cached.
out=$(wrk -t2 -c32 -d"$(( N / 4000 + 5 ))s" -s "$ROOT/bench/wrk.lua" "http://127.0.0.1:$gw/" -- "$TMP/cookies-sqlite")
grep -q '^BENCH .*non200=0' <<<"$out" || { echo "not every request was a 200: $out" >&2; exit 1; }
after=$(rss)
echo "| cached (gateway RSS growth over $N sessions, seeded without provider tokens) | $(( (after - before) * 1024 / N )) B |"
