#!/bin/bash
# Usage: pss.sh TAG RATE DURATION : delivery on, receiver niced 19, with pg_stat_statements
set -e
B=${B:-/tmp/bin-s6}
D=/tmp/wh6/data-$1; rm -rf $D
$B/triggers serve --listen 127.0.0.1:18482 --data-dir $D --keygen-tier-max unlimited --keygen-per-minute 100000 \
  --webhook-allow-private true --webhook-delivery true > /tmp/wh6/server-$1.log 2>&1 &
SPID=$!; trap "kill $SPID 2>/dev/null" EXIT
for i in $(seq 400); do curl -sf http://127.0.0.1:18482/health/ready >/dev/null && break; sleep 0.3; done
PG=$(head -1 $D/postgres/postmaster.pid); PORT=$(sed -n 4p $D/postgres/postmaster.pid); SOCK=$(sed -n 5p $D/postgres/postmaster.pid)
Q="psql -h $SOCK -p $PORT -U triggers -d triggers"
$Q -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
kill -INT $PG; sleep 8
sleep 3
for i in $(seq 100); do [ -f $D/postgres/postmaster.pid ] && curl -sf http://127.0.0.1:18482/health/ready >/dev/null && break; sleep 0.3; done
PORT=$(sed -n 4p $D/postgres/postmaster.pid); SOCK=$(sed -n 5p $D/postgres/postmaster.pid)
Q="psql -h $SOCK -p $PORT -U triggers -d triggers"
$Q -c "CREATE EXTENSION pg_stat_statements" -c "SELECT pg_stat_statements_reset()"
$B/loadtest webhook --url http://127.0.0.1:18482 --rate $2 --duration $3 --orgs 100 --connections 128 --drain 60 --receiver-nice 19 --out /tmp/wh6/pss-$1 > /tmp/wh6/pss-$1.txt 2>&1 || echo "loadtest failed" >> /tmp/wh6/pss-$1.txt
$Q -c "SELECT round(total_exec_time::numeric,0) AS ms, calls, rows, round((total_exec_time/greatest(rows,1)*1000)::numeric,1) AS us_per_row, wal_bytes, left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS q FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 20" > /tmp/wh6/pss-$1-statements.txt
kill $SPID; wait $SPID || true
rm -rf $D
