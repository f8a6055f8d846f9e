#!/usr/bin/env bash
# A soak: one server on its own embedded cluster under steady load for MINUTES, in one-minute
# `loadtest run --verify` windows, recording after each window what the disk and the partition
# upkeep did. Shows that disk use levels off once retention drops partitions, what ingest p99
# does meanwhile (per window), and that nothing acknowledged was lost.
#
# Usage: loadtest/soak.sh OUT MINUTES "server flags" [loadtest run flags...]
#   e.g. loadtest/soak.sh /tmp/soak 30 "--config results/…/soak.toml" --rate 5000 --dedup
# Writes OUT/windows.csv (minute, achieved req/s, p50/p99/p99.9/max ms, acknowledged, missing,
# data-dir bytes, events bytes, event_dedup bytes, partitions, and the upkeep's passes, created,
# dropped, trimmed rows, failures so far), OUT/w-N/ (each window's summary) and OUT/server.log.
# The cluster is deleted at the end; KEEP_DATA=1 keeps it. Needs release builds. PORT picks the
# port (default 8092).
set -euo pipefail
out="$1" minutes="$2" flags="$3"
shift 3
root="$(cd "$(dirname "$0")/.." && pwd)"
port="${PORT:-8092}"
data="$out/data"
rm -rf "$out" && mkdir -p "$out"

# shellcheck disable=SC2086
"$root/target/release/triggers" serve --listen "127.0.0.1:$port" --data-dir "$data" \
  --keygen-per-minute 1000000 --keygen-tier-max unlimited $flags >"$out/server.log" 2>&1 &
server=$!
stop() {
  kill -TERM "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  [[ "${KEEP_DATA:-0}" == 1 ]] || rm -rf "$data"
}
trap stop EXIT
for _ in $(seq 1 600); do
  grep -q listening "$out/server.log" && break
  kill -0 "$server" 2>/dev/null || { cat "$out/server.log"; exit 1; }
  sleep 0.1
done
grep -q listening "$out/server.log" || { echo "server did not start" >&2; exit 1; }

psql_q() {
  psql -h "$data/run" -U triggers -d triggers -At -c "$1"
}
echo "minute,achieved_rps,p50_ms,p99_ms,p999_ms,max_ms,acknowledged,missing,data_dir_bytes,events_bytes,dedup_bytes,partitions,passes,created,dropped,trimmed_rows,upkeep_failures" \
  >"$out/windows.csv"
for m in $(seq 1 "$minutes"); do
  # The server is warm after the first window: no warm-up between windows.
  "$root/target/release/loadtest" run --url "http://127.0.0.1:$port" --duration 60 --verify --warmup 0 \
    --out "$out/w-$m" "$@" >"$out/w-$m.log" 2>&1 || true
  summary="$out/w-$m/summary.json"
  stats=$(curl -s "http://127.0.0.1:$port/api/queue/stats")
  row=$(python3 - "$summary" "$stats" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))[0]
lat = t["latency_ms"]
v = t["verify"] or {"acknowledged": "", "unknown": ""}
missing = v.get("unknown", "")
p = json.loads(sys.argv[2])["partitions"]
print(",".join(str(x) for x in [
    round(t["achieved_rate"]), lat["p50"], lat["p99"], lat["p99.9"], lat["max"],
    v["acknowledged"], missing,
    p["passes"], p["created"], p["dropped"], p["trimmed_rows"], p["failures"]]))
EOF
)
  IFS=, read -r rps p50 p99 p999 max acked missing passes created dropped trimmed failures <<<"$row"
  dir_bytes=$(du -sb "$data" | cut -f1)
  events_bytes=$(psql_q "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
                         FROM pg_class c WHERE c.relname LIKE 'events%' AND c.relkind = 'r'")
  dedup_bytes=$(psql_q "SELECT pg_total_relation_size('event_dedup')")
  parts=$(psql_q "SELECT count(*) FROM pg_class WHERE relname LIKE 'events_k%' AND relkind = 'r'")
  echo "$m,$rps,$p50,$p99,$p999,$max,$acked,$missing,$dir_bytes,$events_bytes,$dedup_bytes,$parts,$passes,$created,$dropped,$trimmed,$failures" \
    | tee -a "$out/windows.csv"
done
