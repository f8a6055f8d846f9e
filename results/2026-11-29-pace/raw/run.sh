#!/bin/bash
# Usage: run.sh BUILD_DIR OUT [extra server args]
# One `loadtest hostile` run against a fresh server of BUILD_DIR on its own embedded cluster.
# Runs b*/a*: the seven flood shapes (as below); a7-full, a8-full: every shape (no --attacks);
# ce1-ce3: --attacks chunk-extension.
set -e
B=$1; OUT=$2; shift 2
rm -rf /tmp/h9/ab/data-$OUT
$B/triggers serve --listen 127.0.0.1:18471 --data-dir /tmp/h9/ab/data-$OUT --keygen-tier-max unlimited "$@" > /tmp/h9/ab/server-$OUT.log 2>&1 &
SPID=$!
for i in $(seq 200); do curl -sf http://127.0.0.1:18471/health/ready >/dev/null && break; sleep 0.3; done
/tmp/h9/before/loadtest hostile --url http://127.0.0.1:18471 --server-pid $SPID --duration 15 --connections 100 \
  --attacks pipeline,smuggle,chunk-extension,no-key-big-body,refused-values,unknown-keys,signup \
  --out /tmp/h9/ab/$OUT > /tmp/h9/ab/$OUT.stdout 2>&1 || true
kill $SPID; wait $SPID || true
rm -rf /tmp/h9/ab/data-$OUT
