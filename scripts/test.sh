#!/usr/bin/env bash
# The test command: starts what the tests need (PostgreSQL, a throwaway Tansu
# broker unless one already listens on KAFKA_BROKERS) and runs every test.
# Extra arguments go to `cargo test` (e.g. ./scripts/test.sh checkout).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
# Decided from their running times on a 2-core machine (README "Reliability").
FAULTS_CI="kill rebalance relay-kill relay-freeze consumer-freeze poison duplicate-storm"
trap cleanup EXIT
cd "$ROOT"

ensure_postgres
start_tls_postgres
start_replica_postgres
ensure_chromium
start_broker "memory://tansu/"

# Databases of earlier runs that were interrupted before they could drop
# theirs; one that something is connected to belongs to a run still going.
psql -d "${DATABASE_URL%/*}/postgres" -Atqc \
  "SELECT datname FROM pg_database d
   WHERE (datname LIKE 'orderflow\_test\_%' OR datname LIKE 'orderflow\_faults\_%')
     AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)" 2>/dev/null |
  while read -r db; do psql -d "${DATABASE_URL%/*}/postgres" -qc "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 || true; done

say "running the tests"
cargo test --locked "$@"

# The fault scenarios that fit CI's time, at a small scale (README
# "Reliability"; ./scripts/faults.sh runs all of them at 100,000 events).
# Each starts a broker of its own. Skipped when a test filter was given.
if [ "$#" -eq 0 ]; then
  say "running the CI subset of the fault scenarios"
  cargo build --locked  # the whole workspace, as run.sh builds it (same features: nothing rebuilt)
  "$TARGET/debug/orderflow-faults" --quick --events "${FAULTS_EVENTS:-3000}" $FAULTS_CI
fi
