#!/bin/bash
# Usage: run2.sh CORE_NICE OUT  (attackers at nice 19)
set -e
B=/work/main/target/release
$B/triggers serve --listen 127.0.0.1:18471 --data-dir /tmp/h9/data --keygen-tier-max unlimited > /tmp/h9/server-$2.log 2>&1 &
SPID=$!
for i in $(seq 100); do curl -sf http://127.0.0.1:18471/health/ready >/dev/null && break; sleep 0.3; done
for t in /proc/$SPID/task/*; do
  case "$(cat $t/comm)" in core-*) renice -n $1 -p $(basename $t) >/dev/null;; esac
done
$B/loadtest hostile --url http://127.0.0.1:18471 --server-pid $SPID --duration 15 --connections 100 \
  --attacks pipeline,smuggle,chunk-extension,no-key-big-body,refused-values,unknown-keys,signup \
  --attacker-nice 19 --out /tmp/h9/$2 > /tmp/h9/$2.stdout 2>&1 || true
kill $SPID; wait $SPID || true
