#!/usr/bin/env bash
# Runs the whole mesh (`agora serve`, release build) on a fresh machine:
# starts PostgreSQL and Redis if they are not running, and, when no MongoDB
# answers on 27017 and MONGODB_URI is not set, installs and starts the local
# MongoDB-wire server (data kept in .tools/run/mongo-dev, left running for
# the next run). Arguments go to `agora serve` (`./scripts/run.sh --target edge`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

start_postgres_and_redis
if [ -z "${MONGODB_URI:-}" ] && ! port_open 27017; then
  install_python_tools
  start_mongo 27017 "$TOOLS/run/mongo-dev" mongo-dev || true
  log "the local MongoDB-wire server keeps running; stop it with: $TOOLS/venv/bin/nx-27017 --stop --pid-file $TOOLS/run/mongo-dev.pid"
fi
exec cargo run --release -- serve "$@"
