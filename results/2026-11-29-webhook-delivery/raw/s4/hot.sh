#!/bin/bash
# Usage: hot.sh TAG VARIANT(base|hot) RATE DURATION
# Delivery on, receiver niced 19. VARIANT hot: before the run, events_by_status is dropped and
# events gets fillfactor 80, so that the status update on delivery can be HOT.
set -e
B=/work/main/target/release
D=/tmp/wh/data-$1; rm -rf $D
$B/triggers serve --listen 127.0.0.1:18482 --data-dir $D --keygen-tier-max unlimited --keygen-per-minute 100000 \
  --webhook-allow-private true --webhook-delivery true > /tmp/wh/server-$1.log 2>&1 &
SPID=$!
for i in $(seq 400); do curl -sf http://127.0.0.1:18482/health/ready >/dev/null && break; sleep 0.3; done
PG=$(head -1 $D/postgres/postmaster.pid); PORT=$(sed -n 4p $D/postgres/postmaster.pid); SOCK=$(sed -n 5p $D/postgres/postmaster.pid)
if [ $2 = hot ]; then
  psql -h $SOCK -p $PORT -U triggers -d triggers -c "DROP INDEX events_by_status; ALTER TABLE events SET (fillfactor = 80);"
fi
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
pgcpu() { for p in $(pgrep -P $PG) $PG; do awk '{print $14+$15}' /proc/$p/stat 2>/dev/null; done | awk '{s+=$1} END {print s}'; }
S0=$(cpu $SPID); P0=$(pgcpu)
$B/loadtest webhook --url http://127.0.0.1:18482 --rate $3 --duration $4 --orgs 100 --connections 128 --drain 60 --receiver-nice 19 --out /tmp/wh/hot-$1 > /tmp/wh/hot-$1.txt 2>&1 || echo "loadtest failed" >> /tmp/wh/hot-$1.txt
S1=$(cpu $SPID); P1=$(pgcpu)
echo "$1 $2: server cpu ticks $((S1-S0)), postgres cpu ticks $((P1-P0)), events $(( $3 * $4 ))" >> /tmp/wh/hot-summary.txt
psql -h $SOCK -p $PORT -U triggers -d triggers -Atc "SELECT 'events upd ' || n_tup_upd || ' hot ' || n_tup_hot_upd FROM pg_stat_user_tables WHERE relname='events'" >> /tmp/wh/hot-summary.txt || true
grep -E "latency ms|missing\"" /tmp/wh/hot-$1.txt | head -3 >> /tmp/wh/hot-summary.txt
kill $SPID; wait $SPID || true
rm -rf $D
