#!/bin/bash
# A/B of two dqe-enforcer binaries run at the same time, each with its own node and its own
# client (`loopback_bench`, window 32, 2 threads): on a machine shared with other work both
# see the same load at the same moments, and the one that needs less CPU per request gets
# more requests through. ROUNDS rounds of SECONDS_EACH s, fresh nodes each round.
#   BEFORE=path/to/old/dqe-enforcer bash backend-std/examples/ab_together.sh [interval|always] [mix|test|set]
set -u
cd "$(dirname "$0")/../.."
POLICY=${1:-interval}
MODE=${2:-mix}
ROUNDS=${ROUNDS:-5}
S=${SECONDS_EACH:-5}
A=${BEFORE:?BEFORE=path of the binary to compare with}
B=${AFTER:-target/release/dqe-enforcer}
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
trap 'rm -rf "$D"' EXIT
echo "A/B together, $POLICY $MODE: before=$A after=$B, $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)"
ratios=""
for r in $(seq 1 "$ROUNDS"); do
  rm -rf "$D/a" "$D/b"
  RUST_LOG=warn $A --dev --port-base 9121 --data-dir "$D/a" --fsync "$POLICY" & pa=$!
  RUST_LOG=warn $B --dev --port-base 9131 --data-dir "$D/b" --fsync "$POLICY" & pb=$!
  sleep 0.8
  target/release/examples/loopback_bench --threads 2 --window 32 --seconds "$S" --mode "$MODE" \
    --target 127.0.0.1:9121 --prefix "a$r-" > "$D/ra" &
  ca=$!
  target/release/examples/loopback_bench --threads 2 --window 32 --seconds "$S" --mode "$MODE" \
    --target 127.0.0.1:9131 --prefix "b$r-" > "$D/rb"
  wait $ca
  kill -INT $pa $pb; wait $pa $pb
  a=$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' "$D/ra"); b=$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' "$D/rb")
  ratio=$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", (a > 0 ? b / a : 0)}')
  ratios="$ratios $ratio"
  echo "round $r: before $a/s, after $b/s, after/before $ratio [load $(cut -d' ' -f1 /proc/loadavg)]"
done
echo "$ratios" | tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {printf "median after/before: %s\n", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'
