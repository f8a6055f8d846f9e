#!/usr/bin/env bash
# idle.sh BIN PORT DIR SECONDS: starts BIN on a fresh data dir, lets it settle, reads the CPU
# ticks of it and its descendants over SECONDS of idleness, then under 500 req/s.
bin=$1 port=$2 dir=$3 secs=$4
here="$(cd "$(dirname "$0")" && pwd)" root="$(cd "$(dirname "$0")/../.." && pwd)"
rm -rf "$dir"
"$bin" serve --listen 127.0.0.1:$port --data-dir "$dir" --keygen-per-minute 100000 --keygen-tier-max unlimited </dev/null >"$dir.log" 2>&1 &
pid=$!
for i in $(seq 1 100); do curl -sf 127.0.0.1:$port/health >/dev/null && break; sleep 0.2; done
sleep 10
python3 "$here/cpucheck.py" $pid $secs | awk -v s=$secs -v p=$pid '$1==p {tr+=$4} /own/ {t+=$4+$6} END {printf "idle: tree %.3f cores, server process %.3f cores\n", t/100/s, tr/100/s}'
"$root/target/release/loadtest" run --url http://127.0.0.1:$port --rate 500 --duration 30 --connections 64 --orgs 50 --warmup 3 2>/dev/null | grep cpu
kill $pid; wait $pid 2>/dev/null
