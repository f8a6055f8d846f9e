#!/bin/bash
# 20 M-event table, then 60 s at 20k req/s with writeback 250 / 1000 / 250
set -u
bin=/tmp/bin-s7wb
d=/tmp/s7/big
port=18486
start() { # flags...
  $bin/triggers serve --listen 127.0.0.1:$port --data-dir $d/data --keygen-per-minute 1000000 --keygen-tier-max unlimited "$@" >> $d/server.log 2>&1 &
  pid=$!
  for i in $(seq 1 300); do curl -sf http://127.0.0.1:$port/health/ready >/dev/null && break; sleep 0.2; done
}
psqlq() { 
  sock=$(sed -n 5p $d/data/postgres/postmaster.pid); p=$(sed -n 4p $d/data/postgres/postmaster.pid)
  psql -h $sock -p $p -U triggers -d triggers -Atc "$1"
}
start --writeback-ms 250
echo "prefill start $(date -u +%T)"
$bin/loadtest run --url http://127.0.0.1:$port --scenario batch --batch-size 100 --rate 900 --duration 230 --orgs 100 --connections 64 > $d/prefill.txt 2>&1
echo "prefill end $(date -u +%T) rows $(psqlq 'select count(*) from events')"
# let autovacuum finish its first pass over the new table
for i in $(seq 1 120); do
  n=$(psqlq "select count(*) from pg_stat_progress_vacuum")
  [[ "$n" == 0 ]] && break; sleep 5
done
echo "vacuum idle $(date -u +%T) $(psqlq "select relname, last_autovacuum, last_autoanalyze from pg_stat_user_tables where relname='events'")"
kill $pid; wait $pid
for wb in 250 1000 250 1000; do
  start --writeback-ms $wb
  sleep 5
  $bin/loadtest run --url http://127.0.0.1:$port --rate 20000 --duration 60 --orgs 100 --connections 128 > $d/run-$wb-$(date +%H%M%S).txt 2>&1
  echo "wb $wb $(date -u +%T) $(grep -E 'latency' $d/run-$wb-*.txt | tail -1 | tr -s ' ')"
  echo "rows $(psqlq 'select count(*) from events') size $(psqlq "select pg_size_pretty(pg_total_relation_size('events'))")"
  kill $pid; wait $pid
done
