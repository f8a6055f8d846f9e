#!/usr/bin/env bash
# Crash test at length: kill -9 the server at random moments under load, restart it on the same
# data directory, and count acknowledged events lost or duplicated. Usage: tests/crash.sh [CYCLES]
set -euo pipefail
cd "$(dirname "$0")/.."
CRASH_CYCLES="${1:-50}" cargo test --release --test server durability::kill_9 -- --nocapture 2>&1 \
  | grep -E "^(cycle|crash test|test result)|panicked|left:|right:"
