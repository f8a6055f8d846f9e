#!/usr/bin/env bash
# Durable-mode ingest benchmark with wrk against a running server: creates ORGS organizations
# (tier `unlimited`) through the API, then POSTs events spread over them.
# Usage: bench/wrk-ingest.sh [URL] [CONNECTIONS] [SECONDS] [ORGS]
# wrk is closed-loop (it waits for each answer), so its latencies understate the tail under
# overload; the open-loop generator in loadtest/ replaces it.
set -euo pipefail
url="${1:-http://127.0.0.1:8090}"
conns="${2:-64}"
secs="${3:-20}"
orgs="${4:-100}"
here="$(cd "$(dirname "$0")" && pwd)"
keys="$(mktemp)"
for i in $(seq 1 "$orgs"); do
  created=$(curl -sf -XPOST "$url/api/keys/generate" \
    -d "{\"organization_name\":\"bench-$i\",\"tier\":\"unlimited\"}") || {
    echo "creating organization $i failed; for many organizations start the server with --keygen-per-minute 100000 (self-serve signup is limited per address)" >&2
    exit 1
  }
  printf '%s\n' "$created" | sed -E 's/.*"api_key":"([^"]+)".*/\1/' >>"$keys"
done
TRIGGERS_KEYS="$keys" wrk -t2 -c"$conns" -d"${secs}s" --latency -s "$here/wrk-ingest.lua" "$url"
rm -f "$keys"
