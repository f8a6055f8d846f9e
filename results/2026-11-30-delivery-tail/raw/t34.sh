#!/bin/bash
# T3: one hanging endpoint among 100 vs none; T4: 1M undelivered backlog, RSS.
B=${B:?}
start() { # $1 data dir
  rm -rf $1
  $B/triggers serve --listen 127.0.0.1:18483 --data-dir $1 --keygen-tier-max unlimited --keygen-per-minute 100000 \
    --webhook-allow-private true > $1.log 2>&1 &
  SPID=$!
  for i in $(seq 400); do curl -sf http://127.0.0.1:18483/health/ready >/dev/null && break; sleep 0.3; done
}
for r in 1; do
  for h in 0 1; do
    start /tmp/wh6/t34-t3-$r-$h
    $B/loadtest webhook --url http://127.0.0.1:18483 --rate 2000 --duration 30 --orgs 100 --connections 64 \
      --hanging-orgs $h --drain 30 --out /tmp/wh6/t34-t3-$r-$h-out > /tmp/wh6/t34-t3-$r-$h.txt 2>&1
    kill $SPID; wait $SPID
  done
done
start /tmp/wh6/t34-t4
( peak=0; while kill -0 $SPID 2>/dev/null; do r=$(awk '/VmRSS/ {print $2}' /proc/$SPID/status 2>/dev/null); [ -n "$r" ] && [ $r -gt $peak ] && peak=$r && echo $peak > /tmp/wh6/t34-t4-peak-kb; sleep 0.1; done ) &
$B/loadtest webhook --url http://127.0.0.1:18483 --scenario batch --batch-size 100 --rate 500 --duration 24 \
  --orgs 100 --connections 32 --hanging-orgs 100 --drain 0 --out /tmp/wh6/t34-t4-out > /tmp/wh6/t34-t4.txt 2>&1
curl -s http://127.0.0.1:18483/api/queue/stats > /tmp/wh6/t34-t4-stats-1.json
sleep 10
curl -s http://127.0.0.1:18483/api/queue/stats > /tmp/wh6/t34-t4-stats-2.json
echo "peak RSS kB: $(cat /tmp/wh6/t34-t4-peak-kb)" >> /tmp/wh6/t34-t4.txt
kill $SPID; wait $SPID
echo done > /tmp/wh6/t34-t34.done
