#!/bin/bash
# wb.sh TAG FLUSH(0|1) RATE SECONDS: fresh server, loadtest run, per-second Dirty/Writeback kB next to loadtest's slowest.
B=${B:-/tmp/bin-wb}; OUT=/tmp/p11; PORT=18483; D=$OUT/data-$1; rm -rf $D
$B/triggers serve --listen 127.0.0.1:$PORT --data-dir $D --keygen-tier-max unlimited --keygen-per-minute 100000 ${EXTRA} > $OUT/server-$1.log 2>&1 &
SPID=$!; trap "kill $SPID 2>/dev/null; wait $SPID 2>/dev/null; rm -rf $D" EXIT
for i in $(seq 400); do curl -sf http://127.0.0.1:$PORT/health/ready >/dev/null && break; sleep 0.3; done

( while kill -0 $SPID 2>/dev/null; do echo "$(date +%s) $(awk '/^Dirty:|^Writeback:/ {printf "%s ", $2}' /proc/meminfo)"; sleep 1; done ) > $OUT/dirty-$1.txt &
$B/loadtest run --url http://127.0.0.1:$PORT --rate $3 --duration $4 --orgs 100 --connections 128 > $OUT/lt-$1.txt 2>&1
[ -n "$FPID" ] && kill $FPID
echo "$1 flush=$2: $(grep 'latency ms' $OUT/lt-$1.txt)" >> $OUT/wb-summary.txt
