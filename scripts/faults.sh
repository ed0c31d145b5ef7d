#!/usr/bin/env bash
# The fault-injection suite (README "Reliability"): each scenario gets a fresh
# database, a Tansu broker of its own and orderflow worker processes, breaks
# them while a seeded mix is produced, then checks everything with one oracle.
#   ./scripts/faults.sh                          every scenario but soak, 100,000 events each
#   ./scripts/faults.sh kill poison              just these (see --list)
#   ./scripts/faults.sh --events 10000 --quick   smaller, with shorter outages
#   ./scripts/faults.sh soak                     30 minutes at 1,000 events/s
# Logs of each scenario's broker and workers: .local/faults/<scenario>-<id>/.
# Some scenarios restart the local PostgreSQL cluster or take all its
# connections: run it on a machine of your own, not next to other work.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

case "${1:-}" in -h|--help) sed -n '2,11p' "$0"; exit 0 ;; esac
ensure_postgres
ensure_tansu
say "building orderflow and the fault runner (release, several minutes the first time)"
cargo build --release --locked -p orderflow -p orderflow-faults
say "running the fault scenarios"
"$TARGET/release/orderflow-faults" "$@"
