#!/usr/bin/env bash
# The container image's layout, checked on the host (no image can be built here): the server
# run as an unprivileged account with the Dockerfile's environment, its data directory on a
# path of its own, its PostgreSQL running as that account too, the Dockerfile's HEALTHCHECK
# command passing, and the STOPSIGNAL stopping it gracefully with the cluster. Needs root (to
# make the account and switch to it) and a built server (target/debug/triggers, or under
# CARGO_TARGET_DIR, as
# `cargo test` leaves it; BIN= another). Exit 2: not root, nothing checked.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "container-layout: not root: skipped" >&2
  exit 2
fi
bin="${BIN:-${CARGO_TARGET_DIR:-target}/debug/triggers}"
port="${PORT:-18497}"
user=triggers-layout
id "$user" >/dev/null 2>&1 ||
  useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$user"

root=$(mktemp -d)
cleanup() {
  [ -n "${server:-}" ] && kill -KILL "$server" 2>/dev/null || true
  rm -rf "$root"
}
trap cleanup EXIT
chmod 755 "$root"
mkdir -p "$root/usr/local/bin" "$root/var/lib/triggers"
cp "$bin" "$root/usr/local/bin/triggers"
chown "$user" "$root/var/lib/triggers"
log="$root/server.log"

# The Dockerfile's ENV, with the port moved off 8090.
env_from_dockerfile=$(sed -n '/^ENV /,/[^\\]$/p' Dockerfile | sed 's/^ENV //; s/\\$//' | tr -s ' \n' ' ')
# shellcheck disable=SC2086
setpriv --reuid "$user" --regid "$user" --init-groups -- env $env_from_dockerfile \
  TRIGGERS_DATA_DIR="$root/var/lib/triggers/data" TRIGGERS_LISTEN="127.0.0.1:$port" \
  "$root/usr/local/bin/triggers" serve >"$log" 2>&1 &
server=$!

health=$(sed -n '/^HEALTHCHECK/,/CMD/p' Dockerfile | sed -n 's/.*CMD //p' | sed "s/8090/$port/")
ok=""
for _ in $(seq 1 300); do
  if sh -c "$health" >/dev/null 2>&1; then ok=1; break; fi
  kill -0 "$server" 2>/dev/null || break
  sleep 0.2
done
[ -n "$ok" ] || { cat "$log"; echo "container-layout: the health check never passed: $health" >&2; exit 1; }

postmaster=$(head -1 "$root/var/lib/triggers/data/postgres/postmaster.pid")
owner=$(ps -o user= -p "$postmaster")
[ "$owner" = "$user" ] || { echo "container-layout: PostgreSQL runs as $owner, not $user" >&2; exit 1; }
server_owner=$(ps -o user= -p "$server")
[ "$server_owner" = "$user" ] || { echo "container-layout: the server runs as $server_owner" >&2; exit 1; }

kill -TERM "$server"
status=0
wait "$server" || status=$?
server=""
[ "$status" = 0 ] || { cat "$log"; echo "container-layout: exit $status after SIGTERM" >&2; exit 1; }
[ ! -e "$root/var/lib/triggers/data/postgres/postmaster.pid" ] ||
  { echo "container-layout: PostgreSQL left running" >&2; exit 1; }
grep -q "shutdown complete" "$log"
echo "container-layout: as $user, data in its own path, health check '$health' passed, SIGTERM stopped both"
