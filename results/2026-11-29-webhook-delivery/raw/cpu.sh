#!/bin/bash
# Usage: cpu.sh BIN TAG RATE: server CPU µs per delivered event (and PG)
cd /tmp/wh; D=/tmp/wh/cpu-$2; rm -rf $D
$1 serve --listen 127.0.0.1:18485 --data-dir $D --keygen-tier-max unlimited --keygen-per-minute 100000 --webhook-allow-private true > $D.log 2>&1 &
SPID=$!
for i in $(seq 400); do curl -sf http://127.0.0.1:18485/health/ready >/dev/null && break; sleep 0.3; done
PG=$(head -1 $D/postgres/postmaster.pid)
pgcpu() { for p in $(pgrep -P $PG) $PG; do awk '{print $14+$15}' /proc/$p/stat 2>/dev/null; done | awk '{s+=$1} END {print s}'; }
S0=$(awk '{print $14+$15}' /proc/$SPID/stat); P0=$(pgcpu)
/work/main/target/release/loadtest webhook --url http://127.0.0.1:18485 --rate $3 --duration 20 --orgs 100 --connections 64 --drain 60 --out /tmp/wh/cpu-$2-out > /tmp/wh/cpu-$2.txt 2>&1
S1=$(awk '{print $14+$15}' /proc/$SPID/stat); P1=$(pgcpu)
N=$(( $3 * 20 ))
echo "$2: server $(( (S1-S0)*10000000/N/1000 )) us/event, postgres $(( (P1-P0)*10000000/N/1000 )) us/event; $(grep -o '"p99": [0-9.]*' /tmp/wh/cpu-$2.txt | head -2 | tr '\n' ' ')" >> /tmp/wh/cpu-summary.txt
kill $SPID; wait $SPID
