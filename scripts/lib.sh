# Shared set-up for run.sh and test.sh: PostgreSQL, the Tansu broker.
# Sourced, not executed. Everything it starts is recorded for cleanup().

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where cargo puts binaries (CARGO_TARGET_DIR when set, relative to ROOT if relative).
TARGET="${CARGO_TARGET_DIR:-target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
LOCAL="$ROOT/.local"
mkdir -p "$LOCAL"
export PATH="$HOME/.cargo/bin:$PATH"
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orderflow}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
TANSU_VERSION=0.6.0
STARTED_PIDS=()
# Scratch directories removed by cleanup().
TEMP_DIRS=()

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Stops what we started, one at a time and in order (orderflow before the
# broker, so its final offset commit still has a broker to go to).
# A second Ctrl-C must not cut this short and leave the broker running.
# Each gets orderflow's own shutdown timeout (SHUTDOWN_TIMEOUT_SECS, 30 s,
# plus the 5 s its watchdog allows) before SIGKILL.
cleanup() {
  trap '' INT TERM
  local grace=$(( (${SHUTDOWN_TIMEOUT_SECS:-30} + 5) * 10 ))
  for pid in "${STARTED_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 1 "$grace"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  for dir in "${TEMP_DIRS[@]}"; do rm -rf "$dir"; done
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# PostgreSQL: use it if it answers; start the local cluster if it is stopped;
# otherwise explain what to do.
ensure_postgres() {
  if pg_isready -q -d "$DATABASE_URL" 2>/dev/null; then
    return
  fi
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
    local version
    version="$(ls /etc/postgresql | sort -V | tail -1)"
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || die "could not start PostgreSQL $version (see /var/log/postgresql/)"
    for _ in $(seq 1 30); do
      pg_isready -q -d "$DATABASE_URL" 2>/dev/null && return
      sleep 1
    done
    die "PostgreSQL $version started but $DATABASE_URL does not answer"
  fi
  die "no PostgreSQL answers at $DATABASE_URL and none is installed here.
  Install one (Debian/Ubuntu: sudo apt-get install postgresql; macOS: brew install postgresql@15),
  or point DATABASE_URL at a server you can reach, e.g.
  DATABASE_URL=postgres://user:pass@host:5432/orderflow $0"
}

# Tansu, a Kafka-protocol broker: reuse an installed binary, never rebuild.
ensure_tansu() {
  if command -v tansu >/dev/null; then
    return
  fi
  command -v cargo >/dev/null || die "cargo is needed to install the Tansu broker (https://rustup.rs)"
  say "installing the Tansu broker $TANSU_VERSION (first time only, ~10 minutes on 2 cores)"
  cargo install "tansu@$TANSU_VERSION" --locked --features dynostore,libsql || die "cargo install tansu failed"
}

# start_broker STORAGE: reuse a broker already listening on KAFKA_BROKERS,
# else start Tansu there with STORAGE (memory://tansu/ or sqlite://PATH).
start_broker() {
  local storage="$1" host port
  host="${KAFKA_BROKERS%%,*}"; port="${host##*:}"; host="${host%:*}"
  if port_open "$host" "$port"; then
    say "using the broker already listening on $host:$port"
    return
  fi
  ensure_tansu
  say "starting Tansu on $host:$port ($storage)"
  # Own session: a Ctrl-C in the terminal reaches orderflow, not the broker;
  # cleanup() stops the broker after orderflow has committed.
  setsid tansu broker \
    --listener-url "tcp://$host:$port" \
    --advertised-listener-url "tcp://$host:$port" \
    --storage-engine "$storage" >"$LOCAL/tansu.log" 2>&1 &
  STARTED_PIDS+=("$!")
  # On Tansu, orderflow's consumers get a 10 s session unless told otherwise:
  # its group coordinator can leave partitions owned by a member that died,
  # and a short session makes that rare (docs/tansu.md).
  export KAFKA_CONSUMER_CONFIG="${KAFKA_CONSUMER_CONFIG:-session.timeout.ms=10000,heartbeat.interval.ms=2000}"
  for _ in $(seq 1 100); do
    port_open "$host" "$port" && return
    kill -0 "$!" 2>/dev/null || die "Tansu exited at start; see $LOCAL/tansu.log"
    sleep 0.1
  done
  die "Tansu did not listen on $host:$port within 10 s; see $LOCAL/tansu.log"
}

# Chromium and chromedriver for the tracking page's browser test: Debian's
# packages, installed when missing (needs root or sudo).
ensure_chromium() {
  if command -v chromedriver >/dev/null && { command -v chromium >/dev/null || [ -n "${CHROMIUM:-}" ]; }; then
    return
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  command -v apt-get >/dev/null || die "the browser test needs chromium and chromedriver; install them (or set CHROMIUM and CHROMEDRIVER)"
  say "installing chromium and chromium-driver for the browser test"
  $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q chromium chromium-driver >/dev/null; } ||
    die "could not install chromium and chromium-driver"
}

# A throwaway PostgreSQL that takes TLS connections only, for the TLS test:
# its own cluster (initdb; as the postgres user when run as root) on
# PG_TLS_PORT (default 55432), with a CA and a server certificate for
# 127.0.0.1 made here with openssl. Exports ORDERFLOW_TLS_DATABASE_URL
# (sslmode=verify-full against that CA) and ORDERFLOW_TLS_CA.
# A throwaway primary and a hot standby streaming from it (pg_basebackup -R),
# both on loopback, for the read-replica tests. The machine's own cluster is
# not used: making it a replication source would mean editing its pg_hba.conf.
# Exports ORDERFLOW_REPLICA_PRIMARY_URL and ORDERFLOW_REPLICA_STANDBY_URL
# (set both to use servers of your own).
start_replica_postgres() {
  if [ -n "${ORDERFLOW_REPLICA_PRIMARY_URL:-}" ] && [ -n "${ORDERFLOW_REPLICA_STANDBY_URL:-}" ]; then
    say "using the primary and standby at ORDERFLOW_REPLICA_PRIMARY_URL and ORDERFLOW_REPLICA_STANDBY_URL"
    return
  fi
  local bin port="${PG_REPLICA_PORT:-55433}" standby_port dir as=()
  standby_port=$((port + 1))
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  if [ -z "$bin" ] || [ ! -x "$bin/pg_basebackup" ]; then
    bin="$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"
  fi
  [ -x "$bin/initdb" ] && [ -x "$bin/pg_basebackup" ] || die "the read-replica test needs PostgreSQL's server binaries
  (initdb, pg_ctl, pg_basebackup): install them (Debian/Ubuntu: sudo apt-get install postgresql), or set
  ORDERFLOW_REPLICA_PRIMARY_URL and ORDERFLOW_REPLICA_STANDBY_URL to a primary and a hot standby of your own"
  for p in "$port" "$standby_port"; do
    port_open 127.0.0.1 "$p" && die "port $p is taken; set PG_REPLICA_PORT to a free pair (it and the next)"
  done
  dir="$(mktemp -d /tmp/orderflow-pgrepl.XXXXXX)"
  TEMP_DIRS+=("$dir")
  say "starting a PostgreSQL primary on 127.0.0.1:$port and a hot standby of it on :$standby_port ($dir)"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$dir"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$dir/primary" -A trust -U postgres >"$dir/initdb.log" 2>&1 ||
    die "initdb failed; see $dir/initdb.log"
  "${as[@]}" tee -a "$dir/primary/postgresql.conf" >/dev/null <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
wal_level = replica
max_wal_senders = 4
hot_standby = on
CONF
  printf 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n' |
    "${as[@]}" tee "$dir/primary/pg_hba.conf" >/dev/null
  "${as[@]}" "$bin/pg_ctl" -D "$dir/primary" -l "$dir/primary.log" -w start >/dev/null ||
    die "the replica test's primary did not start; see $dir/primary.log"
  STARTED_PIDS+=("$(head -1 "$dir/primary/postmaster.pid")")
  "${as[@]}" "$bin/pg_basebackup" -h 127.0.0.1 -p "$port" -U postgres -D "$dir/standby" -R -X stream \
    >"$dir/basebackup.log" 2>&1 || die "pg_basebackup failed; see $dir/basebackup.log"
  echo "port = $standby_port" | "${as[@]}" tee -a "$dir/standby/postgresql.conf" >/dev/null
  "${as[@]}" "$bin/pg_ctl" -D "$dir/standby" -l "$dir/standby.log" -w start >/dev/null ||
    die "the standby did not start; see $dir/standby.log"
  STARTED_PIDS+=("$(head -1 "$dir/standby/postmaster.pid")")
  export ORDERFLOW_REPLICA_PRIMARY_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export ORDERFLOW_REPLICA_STANDBY_URL="postgres://postgres@127.0.0.1:$standby_port/postgres"
}

start_tls_postgres() {
  if [ -n "${ORDERFLOW_TLS_DATABASE_URL:-}" ]; then
    say "using the TLS PostgreSQL at ORDERFLOW_TLS_DATABASE_URL"
    return
  fi
  local bin port="${PG_TLS_PORT:-55432}" dir as=()
  bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    bin="$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"
  fi
  [ -x "$bin/initdb" ] || die "the TLS test needs PostgreSQL's server binaries (initdb, pg_ctl) to start a TLS-only cluster:
  install them (Debian/Ubuntu: sudo apt-get install postgresql), or set ORDERFLOW_TLS_DATABASE_URL to a
  server that requires TLS, e.g. postgres://user@host:5432/postgres?sslmode=verify-full&sslrootcert=/path/ca.crt"
  command -v openssl >/dev/null || die "the TLS test needs openssl to make its certificates (apt-get install openssl)"
  port_open 127.0.0.1 "$port" && die "port $port is taken; set PG_TLS_PORT to a free one"
  dir="$(mktemp -d /tmp/orderflow-pgtls.XXXXXX)"
  TEMP_DIRS+=("$dir")
  say "starting a TLS-only PostgreSQL on 127.0.0.1:$port (certificates in $dir)"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=orderflow test CA" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile san.ext -out server.crt 2>/dev/null
    chmod 600 server.key
  ) || die "could not make the test certificates"
  if [ "$(id -u)" -eq 0 ]; then
    chown -R postgres "$dir"
    as=(runuser -u postgres --)
  fi
  "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 ||
    die "initdb failed; see $dir/initdb.log"
  cat >>"$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
ssl = on
ssl_cert_file = '$dir/server.crt'
ssl_key_file = '$dir/server.key'
fsync = off
CONF
  printf 'local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n' \
    >"$dir/data/pg_hba.conf"
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w start >/dev/null ||
    die "the TLS PostgreSQL did not start; see $dir/postgres.log"
  STARTED_PIDS+=("$(head -1 "$dir/data/postmaster.pid")")
  export ORDERFLOW_TLS_CA="$dir/ca.crt"
  export ORDERFLOW_TLS_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=verify-full&sslrootcert=$dir/ca.crt"
}
