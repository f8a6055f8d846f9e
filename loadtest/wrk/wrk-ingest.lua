-- wrk script: POST /api/events spread over many organizations, ~300-byte payloads.
-- Keys come from the file named by TRIGGERS_KEYS (one per line), made by wrk-ingest.sh.
local keys = {}
for line in io.lines(os.getenv("TRIGGERS_KEYS") or "keys.txt") do
  keys[#keys + 1] = line
end
local n = 0
local note = string.rep("x", 120)

request = function()
  n = n + 1
  local key = keys[(n % #keys) + 1]
  local body = '{"type":"order.created","payload":{"order_id":' .. n ..
    ',"customer":"c-' .. (n % 1000) ..
    '","amount_cents":4999,"currency":"EUR","items":[{"sku":"A-1","qty":2},{"sku":"B-7","qty":1}],"note":"' ..
    note .. '"}}'
  return wrk.format("POST", "/api/events", { ["X-API-Key"] = key, ["Content-Type"] = "application/json" }, body)
end

done = function(summary, latency, requests)
  local l = latency
  io.write(string.format("latency_us p50=%d p90=%d p99=%d p99.9=%d max=%d\n",
    l:percentile(50), l:percentile(90), l:percentile(99), l:percentile(99.9), l.max))
  io.write(string.format("requests=%d non2xx=%d socket_errors=%d\n", summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
