#!/bin/bash
# t4.sh TAG: a 1.2 M backlog (batch scenario, every endpoint hanging); peak RSS and claims.
B=${B:?}; D=/tmp/wh5/t4-$1; rm -rf $D
$B/triggers serve --listen 127.0.0.1:18483 --data-dir $D --keygen-tier-max unlimited --keygen-per-minute 100000 \
  --webhook-allow-private true > $D.log 2>&1 &
SPID=$!; trap "kill $SPID 2>/dev/null; wait $SPID 2>/dev/null; rm -rf $D" EXIT
for i in $(seq 400); do curl -sf http://127.0.0.1:18483/health/ready >/dev/null && break; sleep 0.3; done
( peak=0; while kill -0 $SPID 2>/dev/null; do r=$(awk '/VmRSS/ {print $2}' /proc/$SPID/status 2>/dev/null); [ -n "$r" ] && [ $r -gt $peak ] && peak=$r && echo $peak > /tmp/wh5/t4-$1-peak-kb; sleep 0.1; done ) &
$B/loadtest webhook --url http://127.0.0.1:18483 --scenario batch --batch-size 100 --rate 500 --duration 24 \
  --orgs 100 --connections 32 --hanging-orgs 100 --drain 0 > /tmp/wh5/t4-$1.txt 2>&1
curl -s http://127.0.0.1:18483/api/queue/stats | jq -c .webhook_delivery > /tmp/wh5/t4-$1-stats.txt
sleep 10
curl -s http://127.0.0.1:18483/api/queue/stats | jq -c .webhook_delivery >> /tmp/wh5/t4-$1-stats.txt
echo "peak RSS kB: $(cat /tmp/wh5/t4-$1-peak-kb)" >> /tmp/wh5/t4-$1-stats.txt
