#!/usr/bin/env bash
# The comparison study: implementations of the contract side by side, whatever is running.
#
# Usage: study.sh OUT LABEL=URL [LABEL=URL ...]     (the first is the baseline of every ratio)
#   e.g. study.sh /tmp/study this=http://127.0.0.1:18500 rust=http://127.0.0.1:18501 \
#                            python=http://127.0.0.1:18502
# Parts, each a loadtest command writing report.md, summary.json, .hgrm files and latency.svg
# under OUT/<part>/:
#   ingest-R    single events at R req/s for each R of RATES, every event verified
#   mixed-R     70% ingest, 20% inbox pages, 10% acks at MIXED_RATE, verified
#   sweep-pB    the highest rate holding p99 <= B ms, for each B of BOUNDS (geometric steps;
#               a step fails only if it fails twice)
# and OUT/study.md: every part's figures in two tables (OUT/figures.md: the runs, with what
# verification found and the CPU per answer; the sweeps' highest rates), then every part's
# report, in order, with the command that made it.
# A part that fails for one target still reports the others (loadtest isolates targets); a
# non-zero exit of a part (a target not measured, or events acknowledged but not found) is
# noted in study.md and the study goes on.
#
# Knobs (environment): LOADTEST (target/release/loadtest), DURATION (20), CONNECTIONS (64),
# ORGS (50), RATES ("500 1000 2000"), MIXED_RATE (1000), BOUNDS ("10 50"), SWEEP_START (250),
# SWEEP_GROWTH (1.25), SWEEP_MAX (40000), STEP_SECONDS (10), VERIFY_WAIT (5), BEFORE_EACH (none),
# SETTLE (60: seconds
# between targets, so that an implementation still storing what it acknowledged, or draining a
# backlog, does not run on the machine during the next target's window).
set -uo pipefail
out="$1"
shift
root="$(cd "$(dirname "$0")/../.." && pwd)"
loadtest="${LOADTEST:-$root/target/release/loadtest}"
duration="${DURATION:-20}" connections="${CONNECTIONS:-64}" orgs="${ORGS:-50}"
verify_wait="${VERIFY_WAIT:-5}" settle="${SETTLE:-60}"
targets=() first=""
for t in "$@"; do
  label="${t%%=*}" url="${t#*=}"
  [ -n "$first" ] || first="$label"
  targets+=(--url "$url" --label "$label")
done
mkdir -p "$out"
study="$out/study.md" head="$out/.head.md" body="$out/.parts.md" parts=()
: >"$body"
{
  echo "# Comparison study"
  echo
  echo "- date: $(date -u +%FT%TZ)"
  echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(free -g | awk '/Mem:/ {print $2}') GB, $(uname -r)"
  echo "- loadtest: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo ' (dirty)')"
  echo "- targets: $*"
  echo "- baseline of every ratio: $first"
} >"$head"
cat "$head" >"$study"

part() { # name, then loadtest's arguments
  local name="$1"
  shift
  echo "== $name: loadtest $*" >&2
  "$loadtest" "$@" --out "$out/$name" >"$out/$name.txt" 2>"$out/$name.log"
  local rc=$?
  {
    echo
    echo "## $name"
    echo
    echo '```'
    echo "loadtest $*"
    echo '```'
    [ "$rc" = 0 ] || echo "**loadtest exited $rc**: $(tail -n 3 "$out/$name.log" | tr '\n' ' ')"
    echo
    [ -f "$out/$name/report.md" ] && sed '1s/^# /### /' "$out/$name/report.md"
    [ -f "$out/$name/latency.svg" ] && echo && echo "![$name]($name/latency.svg)"
  } >>"$body"
  [ -f "$out/$name/summary.json" ] && parts+=("$out/$name")
  cat "$head" "$body" >"$study"
}

# BEFORE_EACH: a shell command run before each target (TARGET_NAME, TARGET_URL set), e.g. to
# give the machine to that implementation alone (start it, stop the others).
before=()
[ -n "${BEFORE_EACH:-}" ] && before=(--before-each "$BEFORE_EACH")
common=(--duration "$duration" --connections "$connections" --orgs "$orgs" --settle "$settle" "${before[@]}")
for rate in ${RATES:-500 1000 2000}; do
  part "ingest-$rate" run "${targets[@]}" "${common[@]}" --rate "$rate" --verify \
    --verify-wait "$verify_wait"
done
part "mixed-${MIXED_RATE:-1000}" run "${targets[@]}" "${common[@]}" --scenario mixed \
  --rate "${MIXED_RATE:-1000}" --verify --verify-wait "$verify_wait"
for bound in ${BOUNDS:-10 50}; do
  part "sweep-p$bound" sweep "${targets[@]}" --duration "${STEP_SECONDS:-10}" \
    --connections "$connections" --orgs "$orgs" --settle "$settle" "${before[@]}" \
    --start "${SWEEP_START:-250}" \
    --growth "${SWEEP_GROWTH:-1.25}" --max "${SWEEP_MAX:-40000}" --p99-ms "$bound"
done
# Every part's figures in two tables at the top: the runs, and the sweeps' highest rates.
if [ "${#parts[@]}" -gt 0 ] && "$loadtest" report --parts "${parts[@]}" --out "$out" >/dev/null; then
  { cat "$head"; echo; echo "## Figures"; echo; cat "$out/figures.md"; cat "$body"; } >"$study"
fi
rm -f "$head" "$body"
echo "study: $study" >&2
