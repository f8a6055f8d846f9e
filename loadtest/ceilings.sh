#!/usr/bin/env bash
# The server against its physical ceilings, in one sitting on one machine, so that the ratios
# mean something on a noisy host:
#   1. the server, single-event ingest: highest open-loop rate holding p99 <= P99_MS
#   2. the server, batch ingest (100 events per request): highest rate holding p99 <= BATCH_P99_MS
#   3. bare COPY into the server's PostgreSQL, 1000 rows per commit: a bare table, and one
#      shaped like `events` with all its indexes
#   4. bare HTTP (may_minihttp answering 202 to any POST): highest rate holding p99 <= P99_MS
# and prints the ratios. Every sweep's summary, .hgrm and SVG land under OUT.
#
# Usage: loadtest/ceilings.sh OUT        (needs: cargo build --release --workspace)
# Knobs (environment): STEP_SECONDS (10), P99_MS (10), BATCH_P99_MS (100), SERVER_FLAGS (""), PORT (8093),
# the sweeps' first rates SINGLE_START (8000), BATCH_START (400), BARE_START (20000),
# KEEP_DATA=1 to keep the cluster the sweeps filled (several GB; deleted by default).
set -euo pipefail
out="$1"
secs="${STEP_SECONDS:-10}"
p99="${P99_MS:-10}"
batch_p99="${BATCH_P99_MS:-100}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/target/release"
port="${PORT:-8093}"
url="http://127.0.0.1:$port"
rm -rf "$out" && mkdir -p "$out"

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo ' (dirty)')"
  echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(uname -r)"
  echo "vm.dirty_background_bytes: $(cat /proc/sys/vm/dirty_background_bytes) (tuning/ wants 33554432)"
  echo "server flags: ${SERVER_FLAGS:-none}"
} >"$out/sitting.txt"

# The rate a sweep held; empty when none did (said below, not fatal under pipefail).
held() { grep -oE 'highest rate holding p99 <= [0-9.]+ ms: [0-9]+' "$1" | awk '{print $NF}' || true; }

# shellcheck disable=SC2086
"$bin/triggers" serve --listen "127.0.0.1:$port" --data-dir "$out/data" \
  --keygen-per-minute 1000000 --keygen-tier-max unlimited ${SERVER_FLAGS:-} >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "$url/health/ready" >/dev/null 2>&1 && break
  sleep 0.2
done

"$bin/loadtest" sweep --url "$url" --duration "$secs" --connections 128 --orgs 100 \
  --start "${SINGLE_START:-8000}" --step 2000 --max 60000 --p99-ms "$p99" --out "$out/server-single" \
  | tee "$out/server-single.txt"
"$bin/loadtest" sweep --url "$url" --scenario batch --batch-size 100 --duration "$secs" \
  --connections 64 --orgs 100 --start "${BATCH_START:-400}" --step 100 --max 3000 --p99-ms "$batch_p99" \
  --out "$out/server-batch" | tee "$out/server-batch.txt"
db="host=$out/data/run port=5432 user=triggers dbname=triggers"
for table in bare events; do
  "$bin/loadtest" copy-ceiling --database-url "$db" --seconds "$secs" --batch 1000 \
    --connections 2 --table "$table" | tee "$out/copy-$table.txt"
done
kill "$server" && wait "$server" || true
[[ "${KEEP_DATA:-0}" == 1 ]] || rm -rf "$out/data"

"$bin/bare_http" "127.0.0.1:$port" 2>"$out/bare_http.log" &
bare=$!
trap 'kill $bare 2>/dev/null || true' EXIT
sleep 0.5
"$bin/loadtest" sweep --url "$url" --duration "$secs" --connections 256 --orgs 1 \
  --start "${BARE_START:-20000}" --step 10000 --max 200000 --p99-ms "$p99" --out "$out/bare-http" \
  | tee "$out/bare-http.txt"
kill "$bare" || true

single=$(held "$out/server-single.txt") batch=$(held "$out/server-batch.txt")
http=$(held "$out/bare-http.txt")
copy_bare=$(grep -oE '[0-9]+ rows/s' "$out/copy-bare.txt" | awk '{print $1}')
copy_events=$(grep -oE '[0-9]+ rows/s' "$out/copy-events.txt" | awk '{print $1}')
for sweep in single:"$single" batch:"$batch" bare-http:"$http"; do
  [[ -n "${sweep#*:}" ]] || echo "ceilings: the ${sweep%%:*} sweep held no rate: its ratio reads 0; start it lower" >&2
done
awk -v s="${single:-0}" -v b="${batch:-0}" -v h="${http:-0}" -v cb="${copy_bare:-0}" \
  -v ce="${copy_events:-0}" -v p="$p99" -v bp="$batch_p99" 'BEGIN {
  printf "bare HTTP ceiling (p99 <= %s ms):     %8d req/s\n", p, h
  printf "COPY ceiling, bare table:           %8d rows/s\n", cb
  printf "COPY ceiling, events-shaped table:  %8d rows/s\n", ce
  printf "server, single events (p99 <= %s ms): %8d req/s = %.1f%% of bare HTTP\n", p, s, h ? 100 * s / h : 0
  printf "server, batches of 100 (p99 <= %s ms): %8d events/s = %.1f%% of bare COPY, %.1f%% of events-shaped COPY\n", bp, b * 100, cb ? 100 * b * 100 / cb : 0, ce ? 100 * b * 100 / ce : 0
}' | tee "$out/ratios.txt"
