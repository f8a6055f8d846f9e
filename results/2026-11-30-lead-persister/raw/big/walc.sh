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
for wc in lz4 off lz4 off; do
  start
  psqlq "ALTER SYSTEM SET wal_compression = '$wc'" >/dev/null; psqlq "SELECT pg_reload_conf()" >/dev/null; sleep 1
  w0=$(psqlq "select pg_current_wal_lsn()")
  sleep 4
  f=$d/walc-$wc-$(date +%H%M%S).txt
  $bin/loadtest run --url http://127.0.0.1:$port --rate 20000 --duration 60 --orgs 100 --connections 128 > $f 2>&1
  w1=$(psqlq "select pg_current_wal_lsn()")
  echo "wal_compression $(psqlq 'show wal_compression') $(date -u +%T) $(grep -E 'latency' $f | tr -s ' ') wal_bytes $(psqlq "select pg_wal_lsn_diff('$w1','$w0')") cp $(psqlq 'select checkpoints_timed, checkpoints_req from pg_stat_bgwriter')"
  kill $pid; wait $pid
done
