#!/bin/bash
# 20 M events, then 60 s at 20k: bgwriter build (1 GB buffers, paced bgwriter) vs committed
set -u
d=/tmp/s7/big
port=18486
start() { # bin
  $1/triggers serve --listen 127.0.0.1:$port --data-dir $d/data --keygen-per-minute 1000000 --keygen-tier-max unlimited >> $d/server.log 2>&1 &
  pid=$!
  for i in $(seq 1 300); do curl -sf http://127.0.0.1:$port/health/ready >/dev/null && break; sleep 0.2; done
}
psqlq() {
  sock=$(sed -n 5p $d/data/postgres/postmaster.pid); p=$(sed -n 4p $d/data/postgres/postmaster.pid)
  psql -h $sock -p $p -U triggers -d triggers -Atc "$1"
}
start /tmp/bin-s7wb
/tmp/bin-s7wb/loadtest run --url http://127.0.0.1:$port --scenario batch --batch-size 100 --rate 900 --duration 225 --orgs 100 --connections 64 > $d/bg-prefill.txt 2>&1
sleep 20
kill $pid; wait $pid
for b in bg wb bg wb; do
  start /tmp/bin-s7$b
  sleep 4
  s0=$(psqlq "select buffers_backend||' '||buffers_checkpoint||' '||buffers_clean from pg_stat_bgwriter")
  f=$d/bg-$b-$(date +%H%M%S).txt
  /tmp/bin-s7wb/loadtest run --url http://127.0.0.1:$port --rate 20000 --duration 60 --orgs 100 --connections 128 > $f 2>&1
  s1=$(psqlq "select buffers_backend||' '||buffers_checkpoint||' '||buffers_clean from pg_stat_bgwriter")
  echo "$b $(psqlq 'show shared_buffers') $(date -u +%T) $(grep -E 'latency' $f | tr -s ' ') bgwriter(backend checkpoint clean) $s0 -> $s1"
  kill $pid; wait $pid
done
