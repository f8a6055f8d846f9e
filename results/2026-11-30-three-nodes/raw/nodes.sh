#!/bin/bash
# nodes.sh N OUT: N nodes on one embedded cluster (node 1's), ports 18491.., then a sweep and a
# rate-limit run spread over them.
n=$1 out=$2; B=/tmp/bin-s8rl
rm -rf $out; mkdir -p $out
flags="--keygen-per-minute 1000000 --keygen-tier-max unlimited"
$B/triggers serve --listen 127.0.0.1:18491 --data-dir $out/data $flags > $out/node1.log 2>&1 &
pids=($!)
for i in $(seq 1 100); do curl -sf http://127.0.0.1:18491/health/ready >/dev/null && break; sleep 0.2; done
urls="--url http://127.0.0.1:18491"
for k in $(seq 2 $n); do
  $B/triggers serve --listen 127.0.0.1:$((18490 + k)) --database-url "host=$out/data/run port=5432 user=triggers dbname=triggers" $flags > $out/node$k.log 2>&1 &
  pids+=($!)
  for i in $(seq 1 100); do curl -sf http://127.0.0.1:$((18490 + k))/health/ready >/dev/null && break; sleep 0.2; done
  urls="$urls --url http://127.0.0.1:$((18490 + k))"
done
$B/loadtest sweep $urls --spread --duration 10 --connections 128 --orgs 100 --start 8000 --step 2000 --max 40000 --p99-ms 10 > $out/sweep.txt 2>&1
$B/loadtest run $urls --spread --tier free --orgs 10 --rate 100 --duration 30 --connections 30 > $out/limits.txt 2>&1
for k in $(seq 1 $n); do curl -s http://127.0.0.1:$((18490 + k))/api/queue/stats | python3 -c "import json,sys; d=json.load(sys.stdin); print('node', $k, 'accepted', d['events']['accepted'], 'rate_limits', d['rate_limits'])"; done > $out/nodes.txt
kill "${pids[@]:1}" 2>/dev/null; sleep 1; kill ${pids[0]}; wait
rm -rf $out/data
