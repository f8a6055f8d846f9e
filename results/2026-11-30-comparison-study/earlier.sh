#!/usr/bin/env bash
# Builds and runs the earlier Rust (axum) and Python (FastAPI) implementations of the contract
# from their public repository, in a scratch folder outside this project (none of their code
# enters it), against one PostgreSQL cluster started with the settings this server's embedded
# cluster uses (fsync and synchronous_commit on, shared_buffers 1 GB, max_wal_size 2 GB,
# checkpoint_timeout 15 min, wal_init_zero off), on TCP because their drivers want it.
#
# Usage: earlier.sh SCRATCH start | stop | only LABEL
#   start       both implementations (and PostgreSQL, Redis)
#   only LABEL  `rust` or `python` alone, the other stopped (each start a fresh process; the
#               Python one's queue emptied); any other label stops both (to measure this server
#               with the machine to itself). For loadtest --before-each.
#   stop        everything this script started
#   SCRATCH gets: z_all/ (the repository at REV), pg/ (the cluster), venv/, logs, pids.
#   Ports (environment): PG_PORT (18496), RUST_PORT (18501), PYTHON_PORT (18502), REDIS_PORT (18503).
#   REPO (default https://github.com/pyrex41/z_all), REV (default 5091bb6, the commit measured).
# Needs: git, cargo, python3 with venv, redis-server and redis-cli, PostgreSQL 14+ server
# binaries; as root, the `postgres` account (the cluster runs as it).
set -euo pipefail
scratch="$1" action="$2" label="${3:-}"
pg_port="${PG_PORT:-18496}" rust_port="${RUST_PORT:-18501}" py_port="${PYTHON_PORT:-18502}"
redis_port="${REDIS_PORT:-18503}"
repo="${REPO:-https://github.com/pyrex41/z_all}" rev="${REV:-5091bb6}"
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
db_url="postgres://postgres@127.0.0.1:$pg_port"
rust="$scratch/z_all/zapier_rust" py="$scratch/z_all/zapier_python"

stop_pid() { # name
  if [ -f "$scratch/$1.pid" ]; then
    kill "$(cat "$scratch/$1.pid")" 2>/dev/null || true
    rm -f "$scratch/$1.pid"
  fi
}

up() { # url
  for _ in $(seq 1 150); do curl -sf "$1/health" >/dev/null 2>&1 && break; sleep 0.2; done
  curl -sf "$1/health" >/dev/null || { echo "$1 did not come up: see $scratch/*.log" >&2; exit 1; }
  echo "up: $1"
}

# Everything both need, once: the repository, PostgreSQL, the Rust build, the Python venv,
# Redis.
setup() {
  mkdir -p "$scratch" && chmod 755 "$scratch"
  [ -d "$scratch/z_all" ] || git clone -q "$repo" "$scratch/z_all"
  git -C "$scratch/z_all" checkout -q "$rev"
  echo "earlier implementations at $(git -C "$scratch/z_all" rev-parse HEAD)"
  if [ ! -d "$scratch/pg" ]; then
    mkdir -p "$scratch/pg" && chmod 700 "$scratch/pg"
    [ "$(id -u)" = 0 ] && chown postgres "$scratch/pg"
    as_pg "$pgbin/initdb" -D "$scratch/pg" -U postgres --auth=trust >/dev/null
  fi
  if ! as_pg "$pgbin/pg_ctl" -D "$scratch/pg" status >/dev/null 2>&1; then
    as_pg "$pgbin/pg_ctl" -D "$scratch/pg" -l "$scratch/pg/postgres.log" -w start -o "-p $pg_port \
      -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp -c max_connections=300 \
      -c fsync=on -c synchronous_commit=on -c full_page_writes=on -c shared_buffers=1GB \
      -c max_wal_size=2GB -c checkpoint_timeout=15min -c wal_init_zero=off" >/dev/null
  fi
  for db in zapier_rust zapier_python; do
    as_pg "$pgbin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -c "CREATE DATABASE $db" 2>/dev/null || true
  done
  (cd "$rust" && cargo build --release -q)
  # The Python one pins no versions: its dependencies are installed as they were on its last
  # commit's day (today's sqlmodel refuses the naive datetimes it writes).
  if [ ! -x "$scratch/venv/bin/gunicorn" ]; then
    python3 -m venv "$scratch/venv"
    "$scratch/venv/bin/pip" install -q uv
    local until
    until=$(date -d "$(git -C "$scratch/z_all" log -1 --format=%cs) + 1 day" +%F)
    "$scratch/venv/bin/uv" pip install --python "$scratch/venv/bin/python" -q --reinstall \
      --exclude-newer "$until" fastapi 'uvicorn[standard]' sqlmodel alembic asyncpg \
      psycopg2-binary redis bcrypt python-multipart pydantic pydantic-settings httpx greenlet gunicorn
  fi
  if [ ! -f "$scratch/redis.pid" ]; then
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
      >"$scratch/redis.log" 2>&1 </dev/null &
    echo $! >"$scratch/redis.pid"
  fi
}

# The Rust one: release build (it applies its own migrations at start), webhook delivery off;
# its key salt must be an Argon2 salt (base64 without padding).
start_rust() {
  DATABASE_URL="$db_url/zapier_rust" PORT="$rust_port" HOST=127.0.0.1 \
    API_KEY_SALT=c3R1ZHlzYWx0c3R1ZHk WEBHOOK_SECRET=study DISABLE_WEBHOOK_DELIVERY=true \
    RUST_LOG=warn "${CARGO_TARGET_DIR:-$rust/target}/release/zapier-triggers" \
    >"$scratch/rust.log" 2>&1 </dev/null &
  echo $! >"$scratch/rust.pid"
  up "http://127.0.0.1:$rust_port"
}

# The Python one: gunicorn with uvicorn workers (2 per CPU, as its start script), Redis for its
# queue, and its worker, which stores what the API queued. Its queue starts empty: its worker
# never drains it (every message fails), and a queue past 95% refuses every event with 503, so
# one turn's events would otherwise refuse the next turn's.
start_python() {
  redis-cli -p "$redis_port" FLUSHALL >/dev/null
  export DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:$pg_port/zapier_python"
  export REDIS_URL="redis://127.0.0.1:$redis_port" DISABLE_WEBHOOK_DELIVERY=true LOG_LEVEL=warning
  (cd "$py" && PYTHONPATH=src "$scratch/venv/bin/python" create_tables.py >"$scratch/python-tables.log" 2>&1)
  (cd "$py" && PYTHONPATH=src exec "$scratch/venv/bin/gunicorn" src.zapier_triggers_api.main:app \
    --config gunicorn.conf.py --workers $(( $(nproc) * 2 )) --bind "127.0.0.1:$py_port") \
    >"$scratch/python.log" 2>&1 </dev/null &
  echo $! >"$scratch/python.pid"
  (cd "$py" && PYTHONPATH=src exec "$scratch/venv/bin/python" -m zapier_triggers_api.worker) \
    >"$scratch/python-worker.log" 2>&1 </dev/null &
  echo $! >"$scratch/python-worker.pid"
  up "http://127.0.0.1:$py_port"
}

stop_impls() {
  for name in rust python python-worker; do stop_pid "$name"; done
  sleep 1
}

case "$action" in
  start) setup; start_rust; start_python ;;
  only)
    setup >/dev/null
    stop_impls
    case "$label" in
      rust) start_rust ;;
      python) start_python ;;
      *) echo "earlier implementations stopped: $label has the machine" ;;
    esac
    ;;
  stop)
    stop_impls
    stop_pid redis
    [ -d "$scratch/pg" ] && as_pg "$pgbin/pg_ctl" -D "$scratch/pg" -m fast stop >/dev/null 2>&1 || true
    ;;
  *) echo "usage: earlier.sh SCRATCH start|stop|only LABEL" >&2; exit 2 ;;
esac
