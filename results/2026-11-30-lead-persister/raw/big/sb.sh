#!/bin/bash
set -u
bin=/tmp/bin-s7wb
d=/tmp/s7/big
port=18486
start() {
  $bin/triggers serve --listen 127.0.0.1:$port --data-dir $d/data --keygen-per-minute 1000000 --keygen-tier-max unlimited "$@" >> $d/server.log 2>&1 &
  pid=$!
  for i in $(seq 1 300); do curl -sf http://127.0.0.1:$port/health/ready >/dev/null && break; sleep 0.2; done
}
psqlq() {
  sock=$(sed -n 5p $d/data/postgres/postmaster.pid); p=$(sed -n 4p $d/data/postgres/postmaster.pid)
  psql -h $sock -p $p -U triggers -d triggers -Atc "$1"
}
start; psqlq "ALTER SYSTEM RESET wal_compression" >/dev/null; kill $pid; wait $pid
for sb in 1GB 128MB 1GB 128MB; do
  start; psqlq "ALTER SYSTEM SET shared_buffers = '$sb'" >/dev/null; kill $pid; wait $pid
  start
  sleep 4
  f=$d/sb-$sb-$(date +%H%M%S).txt
  b0=$(psqlq "select buffers_backend||' '||buffers_checkpoint||' '||buffers_clean from pg_stat_bgwriter")
  $bin/loadtest run --url http://127.0.0.1:$port --rate 20000 --duration 60 --orgs 100 --connections 128 > $f 2>&1
  b1=$(psqlq "select buffers_backend||' '||buffers_checkpoint||' '||buffers_clean from pg_stat_bgwriter")
  echo "shared_buffers $(psqlq 'show shared_buffers') $(date -u +%T) $(grep -E 'latency' $f | tr -s ' ') bgwriter(backend checkpoint clean) before $b0 after $b1 rows $(psqlq 'select count(*) from events')"
  kill $pid; wait $pid
done
