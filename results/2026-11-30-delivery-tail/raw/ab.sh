#!/bin/bash
# Usage: B=BIN_DIR ab.sh TAG MODE(on|off|hang) RATE DURATION
# A fresh server (embedded PostgreSQL) per run. on: every organization has a webhook, the
# receiver (niced 19) gets every event; hang: every endpoint hangs (queueing only); off:
# delivery disabled, same ingest client work (--verify). CPU ticks over the whole run.
set -e
B=${B:?binary dir}; OUT=${OUT:-/tmp/wh6}; PORT=${PORT:-18482}
D=$OUT/data-$1-$2; rm -rf $D
$B/triggers serve --listen 127.0.0.1:$PORT --data-dir $D --keygen-tier-max unlimited --keygen-per-minute 100000 \
  --webhook-allow-private true --webhook-delivery $([ $2 = off ] && echo false || echo true) ${EXTRA} > $OUT/server-$1-$2.log 2>&1 &
SPID=$!; trap "kill $SPID 2>/dev/null; wait $SPID 2>/dev/null; rm -rf $D" EXIT
for i in $(seq 400); do curl -sf http://127.0.0.1:$PORT/health/ready >/dev/null && break; sleep 0.3; done
PG=$(head -1 $D/postgres/postmaster.pid)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
pgcpu() { for p in $(pgrep -P $PG) $PG; do awk '{print $14+$15}' /proc/$p/stat 2>/dev/null; done | awk '{s+=$1} END {print s}'; }
S0=$(cpu $SPID); P0=$(pgcpu)
[ -n "$SAMPLE" ] && { ./sample.sh $PORT $OUT/sample-$1-$2.txt & }
[ -n "$THREADS" ] && { ./threads.sh $SPID $PG $OUT/threads-$1-$2.txt & }
[ -n "$QS" ] && { ./qsample.sh $D $OUT/qs-$1-$2.txt & }
case $2 in
on) $B/loadtest webhook --url http://127.0.0.1:$PORT --rate $3 --duration $4 --orgs 100 --connections 128 --drain 90 --receiver-nice 19 --out $OUT/ab-$1-$2 > $OUT/ab-$1-$2.txt 2>&1 || echo "loadtest failed" >> $OUT/ab-$1-$2.txt ;;
hang) $B/loadtest webhook --url http://127.0.0.1:$PORT --rate $3 --duration $4 --orgs 100 --connections 128 --drain 1 --hanging-orgs 100 --receiver-nice 19 > $OUT/ab-$1-$2.txt 2>&1 || true ;;
off) $B/loadtest run --url http://127.0.0.1:$PORT --rate $3 --duration $4 --orgs 100 --connections 128 --verify --out $OUT/ab-$1-$2 > $OUT/ab-$1-$2.txt 2>&1 ;;
esac
S1=$(cpu $SPID); P1=$(pgcpu)
echo "$1 $2 rate $3: server cpu ticks $((S1-S0)), postgres cpu ticks $((P1-P0)), events $(( $3 * $4 ))" >> $OUT/ab-summary.txt
grep -E "latency ms|verify|\"delivered\"|missing\"" $OUT/ab-$1-$2.txt | head -8 >> $OUT/ab-summary.txt
