#!/usr/bin/env bash
# The test command: starts what the tests need (PostgreSQL, a throwaway Tansu
# broker unless one already listens on KAFKA_BROKERS) and runs every test.
# Extra arguments go to `cargo test` (e.g. ./scripts/test.sh checkout).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
cd "$ROOT"

ensure_postgres
start_broker "memory://tansu/"

# Databases of earlier runs that were interrupted before they could drop theirs.
psql -d "${DATABASE_URL%/*}/postgres" -Atqc \
  "SELECT datname FROM pg_database WHERE datname LIKE 'orderflow\_test\_%'" 2>/dev/null |
  while read -r db; do psql -d "${DATABASE_URL%/*}/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true; done

say "running the tests"
cargo test --locked "$@"
