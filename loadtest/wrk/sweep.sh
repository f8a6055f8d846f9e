#!/usr/bin/env bash
# Runs the wrk ingest scenario at several connection counts against one running server and
# prints one line per run. Usage: loadtest/wrk/sweep.sh [URL] [SECONDS] [ORGS] [CONNECTIONS...]
set -euo pipefail
url="${1:-http://127.0.0.1:8090}"
secs="${2:-20}"
orgs="${3:-500}"
shift 3 2>/dev/null || shift $#
conns=("${@:-16 32 64 128 256}")
here="$(cd "$(dirname "$0")" && pwd)"
keys="$(mktemp)"
trap 'rm -f "$keys"' EXIT
for i in $(seq 1 "$orgs"); do
  created=$(curl -sf -XPOST "$url/api/keys/generate" \
    -d "{\"organization_name\":\"sweep-$i\",\"tier\":\"unlimited\"}") || {
    echo "creating organization $i failed; for many organizations start the server with --keygen-per-minute 100000 (self-serve signup is limited per address)" >&2
    exit 1
  }
  printf '%s\n' "$created" | sed -E 's/.*"api_key":"([^"]+)".*/\1/' >>"$keys"
done
printf '%-6s %10s %8s %8s %8s %8s %8s %8s\n' conns req/s p50_us p90_us p99_us p99.9_us max_us non2xx
for c in ${conns[*]}; do
  out=$(TRIGGERS_KEYS="$keys" wrk -t2 -c"$c" -d"${secs}s" -s "$here/wrk-ingest.lua" "$url")
  rps=$(grep -E "^Requests/sec" <<<"$out" | awk '{printf "%.0f", $2}')
  lat=$(grep -E "^latency_us" <<<"$out" | sed -E 's/[a-z_0-9.]+=//g; s/latency_us //')
  bad=$(grep -E "^requests=" <<<"$out" | sed -E 's/.*non2xx=([0-9]+).*/\1/')
  printf '%-6s %10s %8s %8s %8s %8s %8s %8s\n' "$c" "$rps" $lat "$bad"
  sleep 2
done
