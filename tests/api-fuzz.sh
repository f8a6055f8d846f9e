#!/usr/bin/env bash
# API fuzzing from the OpenAPI document: schemathesis (pinned, in a virtualenv under target/)
# generates requests for every operation of the running server's /openapi.json, valid and
# invalid, and checks every answer: no 5xx, a status the document lists for the operation, a
# body matching its schema, the documented content type and headers, authentication enforced,
# 405 with Allow for other methods. `POST /api/keys/rotate` is left out: it revokes the key the
# run authenticates with.
#
# Usage: tests/api-fuzz.sh [MAX_EXAMPLES]   (default 50 per operation; CI runs the default)
# API_FUZZ_SEED fixes the generator's seed (CI fixes it, so a landing is never decided by the
# draw; run without it to explore, and fix what it finds).
# Builds and runs the debug server on its embedded PostgreSQL in a temporary
# directory. Exit 0: every check held; 1: a check failed; 2: schemathesis could not be
# installed (no Python venv or no package index), which CI reports and does not count.
set -euo pipefail
cd "$(dirname "$0")/.."
SCHEMATHESIS_VERSION=4.32.5
EXAMPLES="${1:-50}"
VENV="$PWD/target/schemathesis-venv"
BIN="${CARGO_TARGET_DIR:-target}/debug/triggers"

if [ ! -x "$VENV/bin/schemathesis" ]; then
  echo "api-fuzz: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"; }; then
    echo "api-fuzz: could not install schemathesis (python3 venv or the package index unavailable)" >&2
    rm -rf "$VENV"
    exit 2
  fi
fi
cargo build -q -p triggers   # the server as the sources stand (quick when up to date)

DATA=$(mktemp -d /tmp/trg-api-fuzz-XXXXXX)
# Searchable, for the `postgres` account the cluster runs as when this runs as root.
chmod 755 "$DATA"
LOG="$DATA/server.log"
"$BIN" serve --listen 127.0.0.1:0 --data-dir "$DATA/data" >"$LOG" 2>&1 &
PID=$!
cleanup() {
  kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
  rm -rf "$DATA"
}
trap cleanup EXIT

ADDR=""
for _ in $(seq 600); do
  ADDR=$(sed -n 's/.*listening.*addr=\([0-9.:]*\).*/\1/p' "$LOG" | head -1)
  [ -n "$ADDR" ] && break
  kill -0 "$PID" 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.2
done
[ -n "$ADDR" ] || { echo "api-fuzz: the server did not start" >&2; cat "$LOG"; exit 1; }
BASE="http://$ADDR"
KEY=$(curl -sf -XPOST "$BASE/api/keys/generate" -d '{"organization_name":"api-fuzz"}' \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')

# One worker: schemathesis 4.x can trip over CPython's AST when its workers draw concurrently.
# From the temporary directory: schemathesis keeps its reports in `.schemathesis/` there.
cd "$DATA"
"$VENV/bin/schemathesis" run "$BASE/openapi.json" --url "$BASE" \
  -H "X-API-Key: $KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,ignored_auth,missing_required_header,unsupported_method,allow_header_conformance \
  --exclude-path /api/keys/rotate \
  --max-examples "$EXAMPLES" --workers 1 --no-color ${API_FUZZ_SEED:+--seed "$API_FUZZ_SEED"}
echo "api-fuzz: every check held against $BASE"
