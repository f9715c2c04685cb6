#!/bin/bash
# A/B of two dqe-enforcer binaries run at the same time, each with its own node and its own
# client (`loopback_bench`, window 32, 2 threads): on a machine shared with other work both
# see the same load at the same moments, and the one that needs less CPU per request gets
# more requests through. ROUNDS rounds of SECONDS_EACH s, fresh nodes each round.
#   BEFORE=path/to/old/dqe-enforcer bash backend-std/examples/ab_together.sh [interval|always] [mix|test|set]
# PORT_BASE (9121): the before node's ports; the after node's are 10 above.
set -u
ROUNDS=${ROUNDS:-5}
S=${SECONDS_EACH:-5}
PA=${PORT_BASE:-9121}
PB=$((PA + 10))
source "$(dirname "$0")/ab_common.sh"
echo "A/B together, $POLICY $MODE: before=$A after=$B, $(date -u +%H:%M:%S), load $(load 1-3)"
for r in $(seq 1 "$ROUNDS"); do
  rm -rf "$D/a" "$D/b"
  RUST_LOG=warn $A --dev --port-base "$PA" --data-dir "$D/a" --fsync "$POLICY" & pa=$!
  RUST_LOG=warn $B --dev --port-base "$PB" --data-dir "$D/b" --fsync "$POLICY" & pb=$!
  sleep 0.8
  target/release/examples/loopback_bench --threads 2 --window 32 --seconds "$S" --mode "$MODE" \
    --target 127.0.0.1:"$PA" --prefix "a$r-" > "$D/ra" &
  ca=$!
  target/release/examples/loopback_bench --threads 2 --window 32 --seconds "$S" --mode "$MODE" \
    --target 127.0.0.1:"$PB" --prefix "b$r-" > "$D/rb"
  wait $ca
  kill -INT $pa $pb; wait $pa $pb
  a=$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' "$D/ra"); b=$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' "$D/rb")
  ab_ratio "$a" "$b"
  echo "round $r: before $a/s, after $b/s, after/before $ratio [load $(load)]"
done
ab_median
