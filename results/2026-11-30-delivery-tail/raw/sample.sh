#!/bin/bash
# sample.sh PORT OUTFILE: one line a second of delivery figures until the server goes away
while true; do
  j=$(curl -sf http://127.0.0.1:$1/api/queue/stats) || break
  echo "$(date +%s) $(echo "$j" | jq -c '[.webhook_delivery.delivered, .webhook_delivery.limit_per_s, .webhook_delivery.yields, .webhook_delivery.in_memory, .webhook_delivery.claimed, .webhook_delivery.backlog, .events.committed, .latency_us.commit.p99]')" >> $2
  sleep 1
done
