#!/usr/bin/env bash
# The benchmark: a release build, PostgreSQL, and a throwaway Tansu broker of
# its own (on BENCH_KAFKA_PORT, default 19092), fresh for every run: Tansu's
# fetches slow down as its topics fill (docs/tansu.md), so a broker that kept
# earlier runs' topics would skew the figures. Then `orderflow-bench "$@"`
# (e.g. ./scripts/bench.sh --json), the benchmark binary of the bench/ crate.
# To measure against another broker, run ./target/release/orderflow-bench
# with KAFKA_BROKERS set instead.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap cleanup EXIT
cd "$ROOT"

ensure_postgres
export KAFKA_BROKERS="127.0.0.1:${BENCH_KAFKA_PORT:-19092}"
if port_open 127.0.0.1 "${KAFKA_BROKERS##*:}"; then
  die "something already listens on $KAFKA_BROKERS; stop it or choose another BENCH_KAFKA_PORT"
fi
start_broker "memory://tansu/"
say "building orderflow and its benchmark (release)"
cargo build --release --locked -p orderflow -p orderflow-bench
say "running the benchmark"
"$TARGET/release/orderflow-bench" "$@"
