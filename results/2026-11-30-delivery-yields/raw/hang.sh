#!/bin/bash
# hang.sh TAG: 10k req/s for 20 s, every organization's endpoint hanging: ingest pays for
# queueing deliveries (rows, hand-off) but almost no attempts are made.
set -e
B=${B:?}; OUT=/tmp/wh5; PORT=18482
D=$OUT/data-$1; rm -rf $D
$B/triggers serve --listen 127.0.0.1:$PORT --data-dir $D --keygen-tier-max unlimited --keygen-per-minute 100000 \
  --webhook-allow-private true > $OUT/server-$1.log 2>&1 &
SPID=$!; trap "kill $SPID 2>/dev/null; wait $SPID 2>/dev/null; rm -rf $D" EXIT
for i in $(seq 400); do curl -sf http://127.0.0.1:$PORT/health/ready >/dev/null && break; sleep 0.3; done
$B/loadtest webhook --url http://127.0.0.1:$PORT --rate 10000 --duration 20 --orgs 100 --connections 128 --drain 1 --hanging-orgs 100 --receiver-nice 19 > $OUT/hang-$1.txt 2>&1 || true
echo "$1: $(grep 'latency ms' $OUT/hang-$1.txt)" >> $OUT/hang-summary.txt
