#!/usr/bin/env bash
# Crash test at length: under load, kill -9 at random moments the server, its embedded
# postmaster, or both, by turns; restart the server on the same data directory (a postmaster
# killed alone, the running server restarts itself), and count acknowledged events lost or
# duplicated. Usage: tests/crash.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
CRASH_CYCLES="${1:-50}" cargo test --release --test server durability::kill_9 -- --nocapture 2>&1 \
  | grep -E "^(cycle|crash test|test result)|panicked|left:|right:"
