#!/usr/bin/env bash
# A/B of two server configurations (or two binaries) on one machine, in alternating rounds so
# that the noise of a shared host falls on both sides alike. Each round starts a fresh server
# on its own data directory, runs one open-loop `loadtest run` against it, and stops it; the
# summaries are printed side by side and kept under OUT.
#
# Usage: loadtest/ab.sh OUT ROUNDS "A server flags" "B server flags" [loadtest run flags...]
#   e.g. loadtest/ab.sh /tmp/ab 2 "--persisters 2" "--persisters 1" --rate 12000 --duration 15
# A side may name another binary with BIN=/path/to/triggers as its first word:
#   loadtest/ab.sh /tmp/ab 2 "BIN=/tmp/old/triggers" "" --rate 12000
# A side named BARE runs the bare-HTTP responder (loadtest's bare_http: a 202 to any POST,
# nothing stored) instead, so a server's CPU per request can be set against the machine's
# floor at the same rate (issue 11, target 1):
#   loadtest/ab.sh /tmp/cost 3 BARE "" --rate 20000 --duration 15
# A side may also name an SQL file, SQL=/path/file.sql, beside BIN= if any: it is run (psql) on
# the fresh embedded cluster once the server is ready and before the load starts, for schema
# experiments (the server's statements find the changed tables by name):
#   loadtest/ab.sh /tmp/part 3 "" "SQL=/tmp/partition.sql" --rate 12000
# Each run's cluster (hundreds of MB to GBs) is deleted after it; KEEP_DATA=1 keeps it.
# Needs release builds: cargo build --release --workspace. PORT picks the port (default 8091).
set -euo pipefail
out="$1" rounds="$2" a="$3" b="$4"
shift 4
root="$(cd "$(dirname "$0")/.." && pwd)"
port="${PORT:-8091}"
hz=$(getconf CLK_TCK)
mkdir -p "$out"

# CPU ticks (user + system) used so far by process $1 ("self") or by its descendants ("tree";
# the embedded PostgreSQL's postmaster and backends).
cpu_of() {
  local root="$1" which="$2" ticks=0 f line rest
  local -A parent=() used=()
  for f in /proc/[0-9]*/stat; do
    read -r line <"$f" 2>/dev/null || continue
    rest="${line##*) }"
    read -r -a fields <<<"$rest"
    local pid="${f#/proc/}"
    pid="${pid%/stat}"
    parent[$pid]="${fields[1]}"
    used[$pid]=$((fields[11] + fields[12]))
  done
  if [[ "$which" == self ]]; then
    echo "${used[$root]:-0}"
    return
  fi
  for pid in "${!parent[@]}"; do
    local p="${parent[$pid]}"
    while [[ -n "$p" && "$p" != 0 && "$p" != 1 ]]; do
      if [[ "$p" == "$root" ]]; then
        ticks=$((ticks + used[$pid]))
        break
      fi
      p="${parent[$p]:-}"
    done
  done
  echo "$ticks"
}

run_side() { # name flags round
  local name="$1" flags="$2" round="$3" bin="$root/target/release/triggers" sql="" word
  shift 3
  # Leading BIN= and SQL= words, in any order; the rest are server flags.
  while [[ "$flags" == BIN=* || "$flags" == SQL=* ]]; do
    word="${flags%% *}"
    [[ "$flags" == *" "* ]] && flags="${flags#* }" || flags=""
    case "$word" in
      BIN=*) bin="${word#BIN=}" ;;
      SQL=*) sql="${word#SQL=}" ;;
    esac
  done
  local dir="$out/$name-$round"
  rm -rf "$dir" && mkdir -p "$dir"
  if [[ "$flags" == BARE ]]; then
    "$root/target/release/bare_http" "127.0.0.1:$port" >"$dir/server.log" 2>&1 &
  else
    # shellcheck disable=SC2086
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" \
      --keygen-per-minute 1000000 --keygen-tier-max unlimited $flags >"$dir/server.log" 2>&1 &
  fi
  local pid=$!
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
    sleep 0.2
  done
  if [[ -n "$sql" ]]; then
    psql -v ON_ERROR_STOP=1 -q -h "$dir/data/run" -p 5432 -U triggers -d triggers -f "$sql" \
      >"$dir/sql.log" 2>&1 || { echo "$sql failed: $(cat "$dir/sql.log")" >&2; kill "$pid"; exit 1; }
  fi
  local server0 pg0 server1 pg1
  server0=$(cpu_of "$pid" self) pg0=$(cpu_of "$pid" tree)
  # No warm-up: CPU is read around the whole command, so every request it sends must count.
  /usr/bin/time -f "loadtest_cpu_s %U %S" \
    "$root/target/release/loadtest" run --url "http://127.0.0.1:$port" --label "$name" \
    --warmup 0 --out "$dir" "$@" >"$dir/loadtest.txt" 2>&1 || true
  server1=$(cpu_of "$pid" self) pg1=$(cpu_of "$pid" tree)
  local events
  events=$(grep -E '^ *status ' "$dir/loadtest.txt" | grep -oE ' 2[0-9]{2}=[0-9]+' | awk -F= '{s += $2} END {print s + 0}')
  awk -v s=$((server1 - server0)) -v p=$((pg1 - pg0)) -v e="$events" -v hz="$hz" \
    -v l="$(grep loadtest_cpu_s "$dir/loadtest.txt" | awk '{print $2 + $3}')" \
    'BEGIN { if (e == 0) e = 1; printf "cpu us per 2xx request: server %.1f postgres %.1f loadtest %.1f\n", s * 1e6 / hz / e, p * 1e6 / hz / e, l * 1e6 / e }' \
    >>"$dir/loadtest.txt"
  curl -sf "http://127.0.0.1:$port/api/queue/stats" >"$dir/stats.json" || true
  echo "server peak RSS $(awk '/^VmHWM/ {print $2 / 1024 " MB"}' "/proc/$pid/status")" \
    >>"$dir/loadtest.txt"
  kill "$pid" && wait "$pid" || true
  [[ "${KEEP_DATA:-0}" == 1 ]] || rm -rf "$dir/data"
  printf '%-4s round %s  %s\n' "$name" "$round" \
    "$(grep -E 'achieved|latency|cpu us|RSS' "$dir/loadtest.txt" | tr -s ' ' | tr '\n' ' ')"
}

for round in $(seq 1 "$rounds"); do
  run_side A "$a" "$round" "$@"
  run_side B "$b" "$round" "$@"
done
