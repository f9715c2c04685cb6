#!/bin/bash
# A/B of two dqe-enforcer binaries under the same closed-loop load, alternated round by
# round (each first in every other round), so that drifting load from other work hits both
# alike: ROUNDS rounds of SECONDS_EACH s of `loopback_bench --mode mix` (window 32, 2
# threads) against a fresh `--dev` node per round; prints each round's rates (and with mix
# the SETs' p50 and mean latency) and the median ratio after/before. Build first: cargo build --release -p backend-std --bins --examples
#   BEFORE=path/to/old/dqe-enforcer bash backend-std/examples/ab_mix.sh [interval|always] [mix|test|set]
# PORT_BASE (9121): another port base when another run uses this one.
set -u
ROUNDS=${ROUNDS:-6}
S=${SECONDS_EACH:-3}
PORT=${PORT_BASE:-9121}
source "$(dirname "$0")/ab_common.sh"
rate() {
  rm -rf "$D/data"
  RUST_LOG=warn $1 --dev --port-base "$PORT" --data-dir "$D/data" --fsync "$POLICY" & local p=$!
  sleep 0.7
  target/release/examples/loopback_bench --threads 2 --window 32 --seconds "$S" --mode "$MODE" \
    --target 127.0.0.1:"$PORT" --prefix "r$RANDOM-" >"$D/out"
  # The rate, then (mix) the SETs' p50 and mean latency.
  echo "$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' "$D/out") $(sed -n 's/^set: n=[0-9]* p50=\([0-9]*us\).*mean=\([0-9]*us\) \/ test.*/SET p50 \1 mean \2/p' "$D/out")"
  kill -INT $p; wait $p
}
echo "A/B $POLICY $MODE: before=$A after=$B, $(date -u +%H:%M:%S), load $(load 1-3)"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then a=$(rate "$A"); b=$(rate "$B"); else b=$(rate "$B"); a=$(rate "$A"); fi
  ab_ratio "${a%% *}" "${b%% *}"
  echo "round $r: before ${a%% *}/s ${a#* }, after ${b%% *}/s ${b#* }, after/before $ratio [load $(load)]"
done
ab_median
