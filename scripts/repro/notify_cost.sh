#!/usr/bin/env bash
# What NOTIFY costs the write path (docs/realtime.md): pgbench, 6 clients,
# each transaction inserting 20 rows — alone, with pg_notify inside the
# transaction, and with pg_notify right after its commit — with one listener.
# Usage: scripts/repro/notify_cost.sh [seconds per run, default 10]
set -euo pipefail
secs="${1:-10}"
url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orderflow}"
admin="${url%/*}/postgres"
db="${url%/*}/orderflow_notify_cost"
dir="$(mktemp -d)"
trap 'kill %1 2>/dev/null || true; psql -d "$admin" -qc "DROP DATABASE IF EXISTS orderflow_notify_cost" >/dev/null 2>&1; rm -rf "$dir"' EXIT
psql -d "$admin" -qc "DROP DATABASE IF EXISTS orderflow_notify_cost" -c "CREATE DATABASE orderflow_notify_cost"
psql -d "$db" -qc "CREATE TABLE t (id bigserial PRIMARY KEY, v text)"
insert="INSERT INTO t (v) SELECT md5(random()::text) FROM generate_series(1, 20);"
printf 'BEGIN;\n%s\nCOMMIT;\n' "$insert" >"$dir/plain.sql"
printf "BEGIN;\n%s\nSELECT pg_notify('orderflow_feed', 'x');\nCOMMIT;\n" "$insert" >"$dir/notify_in_transaction.sql"
printf "BEGIN;\n%s\nCOMMIT;\nSELECT pg_notify('orderflow_feed', 'x');\n" "$insert" >"$dir/notify_after_commit.sql"
psql -d "$db" -c "LISTEN orderflow_feed" -c "SELECT pg_sleep(100000)" >/dev/null 2>&1 &
for round in 1 2; do
  for s in plain notify_in_transaction notify_after_commit; do
    tps="$(pgbench -n -c 6 -j 2 -T "$secs" -f "$dir/$s.sql" "$db" 2>&1 | awk '/^tps/ {print $3}')"
    printf 'round %s  %-22s %8.0f transactions/s\n' "$round" "$s" "$tps"
  done
done
