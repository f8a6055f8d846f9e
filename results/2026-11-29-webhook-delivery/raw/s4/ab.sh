#!/bin/bash
# Usage: ab.sh ROUND MODE(on|off) RATE DURATION
set -e
B=${B:-/work/main/target/release}
D=/tmp/wh/data-$1-$2; rm -rf $D
$B/triggers serve --listen 127.0.0.1:18482 --data-dir $D --keygen-tier-max unlimited --keygen-per-minute 100000 \
  --webhook-allow-private true --webhook-delivery $([ $2 = off ] && echo false || echo true) --webhook-nice ${NICE:-10} > /tmp/wh/server-$1-$2.log 2>&1 &
SPID=$!
for i in $(seq 400); do curl -sf http://127.0.0.1:18482/health/ready >/dev/null && break; sleep 0.3; done
PG=$(head -1 $D/postgres/postmaster.pid)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
pgcpu() { for p in $(pgrep -P $PG) $PG; do awk '{print $14+$15}' /proc/$p/stat 2>/dev/null; done | awk '{s+=$1} END {print s}'; }
S0=$(cpu $SPID); P0=$(pgcpu)
if [ $2 != off ]; then
  $B/loadtest webhook --url http://127.0.0.1:18482 --rate $3 --duration $4 --orgs 100 --connections 128 --drain 60 --receiver-nice ${RNICE:-0} --out /tmp/wh/ab-$1-$2 > /tmp/wh/ab-$1-$2.txt 2>&1 || echo "loadtest failed" >> /tmp/wh/ab-$1-$2.txt
else
  $B/loadtest run --url http://127.0.0.1:18482 --rate $3 --duration $4 --orgs 100 --connections 128 --out /tmp/wh/ab-$1-$2 > /tmp/wh/ab-$1-$2.txt 2>&1
fi
S1=$(cpu $SPID); P1=$(pgcpu)
echo "round $1 $2: server cpu ticks $((S1-S0)), postgres cpu ticks $((P1-P0)), events $(( $3 * $4 ))" >> /tmp/wh/ab-summary.txt
grep -E "latency ms|p99\"|p50\"|missing|delivered\"" /tmp/wh/ab-$1-$2.txt | head -8 >> /tmp/wh/ab-summary.txt
kill $SPID; wait $SPID || true
