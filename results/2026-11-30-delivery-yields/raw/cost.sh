#!/bin/bash
# cost.sh TAG MODE(off|hang): 10k req/s for 20 s; server and PostgreSQL CPU ticks over the load only.
set -e
B=${B:?}; OUT=/tmp/wh5; PORT=18482
D=$OUT/data-$1-$2; rm -rf $D
$B/triggers serve --listen 127.0.0.1:$PORT --data-dir $D --keygen-tier-max unlimited --keygen-per-minute 100000 \
  --webhook-allow-private true --webhook-delivery $([ $2 = off ] && echo false || echo true) > $OUT/server-$1-$2.log 2>&1 &
SPID=$!; trap "kill $SPID 2>/dev/null; wait $SPID 2>/dev/null; rm -rf $D" EXIT
for i in $(seq 400); do curl -sf http://127.0.0.1:$PORT/health/ready >/dev/null && break; sleep 0.3; done
PG=$(head -1 $D/postgres/postmaster.pid)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
pgcpu() { for p in $(pgrep -P $PG) $PG; do awk '{print $14+$15}' /proc/$p/stat 2>/dev/null; done | awk '{s+=$1} END {print s}'; }
if [ $2 = off ]; then
  $B/loadtest run --url http://127.0.0.1:$PORT --rate 10000 --duration 20 --orgs 100 --connections 128 > $OUT/cost-$1-$2.txt 2>&1 &
else
  $B/loadtest webhook --url http://127.0.0.1:$PORT --rate 10000 --duration 20 --orgs 100 --connections 128 --drain 1 --hanging-orgs 100 --receiver-nice 19 > $OUT/cost-$1-$2.txt 2>&1 &
fi
LPID=$!
sleep 4; S0=$(cpu $SPID); P0=$(pgcpu); sleep 15; S1=$(cpu $SPID); P1=$(pgcpu)
wait $LPID || true
echo "$1 $2: 15 s of load: server ticks $((S1-S0)), postgres ticks $((P1-P0)); $(grep 'latency ms' $OUT/cost-$1-$2.txt)" >> $OUT/cost-summary.txt
