#!/usr/bin/env bash
# The run command: PostgreSQL, a durable Tansu broker, migrations, topics,
# then orderflow itself (workers + relay + HTTP) with sample checkouts.
#   ./scripts/run.sh               everything, with 20 sample checkouts
#   ./scripts/run.sh --no-samples  without sample traffic
# Ctrl-C stops orderflow gracefully (and the broker, if this script started it).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

SAMPLES=20
for arg in "$@"; do
  case "$arg" in
    --no-samples) SAMPLES=0 ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $arg (try --help)" ;;
  esac
done

trap cleanup EXIT
ensure_postgres
mkdir -p "$LOCAL/tansu"
# Tansu reads the path after sqlite:// relative to its working directory.
start_broker "sqlite://.local/tansu/tansu.db"

# The debug profile (dependencies at opt-level 1), which ./scripts/test.sh
# uses too, so the tests reuse this build; the benchmark builds release.
if [ -x "$TARGET/debug/orderflow" ]; then
  say "building orderflow (debug profile, shared with ./scripts/test.sh; seconds when nothing changed)"
else
  say "building orderflow for the first time (debug profile, shared with ./scripts/test.sh): about 5-10 minutes on 2 cores"
fi
cargo build --locked  # the whole workspace: the same features as the tests, so they share it
BIN="$TARGET/debug/orderflow"
export HTTP_ADDR="${HTTP_ADDR:-127.0.0.1:8080}"

say "applying migrations to $DATABASE_URL"
"$BIN" migrate
say "creating topics"
"$BIN" topics apply

say "starting orderflow (logs: $LOCAL/orderflow.log, appended)"
echo "---- orderflow run, $(date -u +%Y-%m-%dT%H:%M:%SZ) ----" >>"$LOCAL/orderflow.log"
"$BIN" run >>"$LOCAL/orderflow.log" 2>&1 &
RUN_PID=$!
STARTED_PIDS=("$RUN_PID" "${STARTED_PIDS[@]}")
for _ in $(seq 1 300); do
  curl -fsS "http://$HTTP_ADDR/readyz" >/dev/null 2>&1 && break
  kill -0 "$RUN_PID" 2>/dev/null || { tail -20 "$LOCAL/orderflow.log" >&2; die "orderflow exited at start"; }
  sleep 0.2
done
curl -fsS "http://$HTTP_ADDR/readyz" >/dev/null || die "orderflow is not ready; see $LOCAL/orderflow.log"

FIRST=""
if [ "$SAMPLES" -gt 0 ]; then
  say "sending $SAMPLES sample checkouts (every 7th invalid, every 5th sent twice)"
  "$BIN" produce --count "$SAMPLES" --interval-ms 100 --invalid-every 7 --duplicate-every 5 | tee "$LOCAL/samples.txt"
  FIRST="$(awk 'NR==1 {print $2}' "$LOCAL/samples.txt")"
  sleep 1
fi

cat <<INFO

orderflow is running.  Try:
  Track an order live in a browser:  http://$HTTP_ADDR/track/${FIRST:-<order_id>}
  curl -N http://$HTTP_ADDR/orders/${FIRST:-<order_id>}/events     (its live stream; Ctrl-C ends it)
  curl -s http://$HTTP_ADDR/orders/${FIRST:-<order_id>}
  curl -s http://$HTTP_ADDR/orders/${FIRST:-<order_id>}/status
  curl -s 'http://$HTTP_ADDR/users/1/orders?limit=5'
  curl -s 'http://$HTTP_ADDR/analytics/summary?currency=USD'       (the last 30 days' figures)
  curl -s 'http://$HTTP_ADDR/analytics/top-products?currency=USD&by=units&limit=3'
  curl -s http://$HTTP_ADDR/readyz
  curl -s http://$HTTP_ADDR/metrics | grep '^orderflow_messages_total'
More traffic (another terminal):  $BIN produce --count 100 --interval-ms 50
Logs: $LOCAL/orderflow.log    Ctrl-C to stop.
INFO

if [ -n "$FIRST" ]; then
  echo; echo "GET /orders/$FIRST/status -> $(curl -s "http://$HTTP_ADDR/orders/$FIRST/status")"
  curl -s http://"$HTTP_ADDR"/metrics | grep '^orderflow_messages_total' || true
fi

wait "$RUN_PID"
