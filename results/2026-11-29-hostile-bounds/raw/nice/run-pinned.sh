#!/bin/bash
# Usage: run3.sh OUT : server + PG + victim on CPU 0 (one core), attackers' thread on CPU 1
set -e
B=/work/main/target/release
taskset -c 0 $B/triggers serve --cores 1 --listen 127.0.0.1:18471 --data-dir /tmp/h9/data --keygen-tier-max unlimited > /tmp/h9/server-$1.log 2>&1 &
SPID=$!
for i in $(seq 100); do curl -sf http://127.0.0.1:18471/health/ready >/dev/null && break; sleep 0.3; done
taskset -c 0 $B/loadtest hostile --url http://127.0.0.1:18471 --server-pid $SPID --duration 15 --connections 100 \
  --attacks pipeline,smuggle,chunk-extension,no-key-big-body,refused-values,unknown-keys,signup \
  --attacker-cpu 1 --out /tmp/h9/$1 > /tmp/h9/$1.stdout 2>&1 || true
kill $SPID; wait $SPID || true
