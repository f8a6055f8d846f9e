#!/bin/bash
# e2e.sh TAG: issue 10's first target: 2,000 events/s for 60 s, 100 organizations, receiver 200 at once.
set -e
B=${B:?}; OUT=/tmp/wh6; PORT=18482
D=$OUT/data-$1; rm -rf $D
$B/triggers serve --listen 127.0.0.1:$PORT --data-dir $D --keygen-tier-max unlimited --keygen-per-minute 100000 \
  --webhook-allow-private true ${EXTRA} > $OUT/server-$1.log 2>&1 &
SPID=$!; trap "kill $SPID 2>/dev/null; wait $SPID 2>/dev/null; rm -rf $D" EXIT
for i in $(seq 400); do curl -sf http://127.0.0.1:$PORT/health/ready >/dev/null && break; sleep 0.3; done
$B/loadtest webhook --url http://127.0.0.1:$PORT --rate 2000 --duration 60 --orgs 100 --connections 64 --out $OUT/e2e-$1 > $OUT/e2e-$1.txt 2>&1 || echo "loadtest failed" >> $OUT/e2e-$1.txt
curl -sf http://127.0.0.1:$PORT/api/queue/stats | jq -c '.webhook_delivery' >> $OUT/e2e-$1.txt
