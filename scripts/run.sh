#!/usr/bin/env bash
# Runs the whole mesh (`agora serve`, release build) on a fresh machine:
# starts PostgreSQL and Redis if they are not running, and, when no MongoDB
# answers on 27017 and MONGODB_URI is not set, installs and starts the local
# MongoDB-wire server (data kept in .tools/run/mongo-dev, left running for
# the next run); likewise the local S3-compatible server (moto, port 4566) for
# chat attachments unless AWS_ENDPOINT_URL_S3 or AGORA_CHAT_ATTACHMENTS_BUCKET
# is set, and for the event queue (SQS) unless AWS_ENDPOINT_URL_SQS is set or
# AWS credentials are configured (then the SDK reaches AWS itself). The
# queues are created by the services. Arguments go to `agora serve`
# (`./scripts/run.sh --target edge`).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

# Decided before anything below sets AWS variables for local servers.
sqs_configured=""
if [ -n "${AWS_ENDPOINT_URL_SQS:-}" ] || [ -n "${AWS_ACCESS_KEY_ID:-}" ] || [ -f "$HOME/.aws/credentials" ]; then
  sqs_configured=yes
fi

start_postgres_and_redis
if [ -z "${MONGODB_URI:-}" ] && ! port_open 27017; then
  install_python_tools
  start_mongo 27017 "$TOOLS/run/mongo-dev" mongo-dev || true
  log "the local MongoDB-wire server keeps running; stop it with: $TOOLS/venv/bin/nx-27017 --stop --pid-file $TOOLS/run/mongo-dev.pid"
fi
# Chat attachments: the local S3-compatible server unless storage is set.
if [ -z "${AWS_ENDPOINT_URL_S3:-}" ] && [ -z "${AGORA_CHAT_ATTACHMENTS_BUCKET:-}" ]; then
  install_python_tools
  start_moto 4566 || true
  export AWS_ENDPOINT_URL_S3=http://127.0.0.1:4566 AWS_REGION=${AWS_REGION:-us-east-1}
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-dev} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-dev}
  export AGORA_CHAT_ATTACHMENTS_BUCKET=agora-chat-attachments AGORA_CHAT_S3_PATH_STYLE=true
fi
# Events: the local SQS-compatible server unless SQS is configured.
if [ -z "$sqs_configured" ]; then
  install_python_tools
  start_moto 4566 || true
  export AWS_ENDPOINT_URL_SQS=http://127.0.0.1:4566 AWS_REGION=${AWS_REGION:-us-east-1}
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-dev} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-dev}
fi
exec cargo run --release -- serve "$@"
