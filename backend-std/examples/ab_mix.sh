#!/bin/bash
# A/B of two dqe-enforcer binaries under the same closed-loop load, alternated round by
# round (each first in every other round), so that drifting load from other work hits both
# alike: ROUNDS rounds of SECONDS_EACH s of `loopback_bench --mode mix` (window 32, 2
# threads) against a fresh `--dev` node per round; prints each round's rates (and with mix
# the SETs' p50 and mean latency) and the median ratio after/before. Build first: cargo build --release -p backend-std --bins --examples
#   BEFORE=path/to/old/dqe-enforcer bash backend-std/examples/ab_mix.sh [interval|always] [mix|test|set]
# PORT_BASE (9121): another port base when another run uses this one.
set -u
cd "$(dirname "$0")/../.."
POLICY=${1:-interval}
MODE=${2:-mix}
ROUNDS=${ROUNDS:-6}
S=${SECONDS_EACH:-3}
A=${BEFORE:?BEFORE=path of the binary to compare with}
B=${AFTER:-target/release/dqe-enforcer}
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
trap 'rm -rf "$D"' EXIT
rate() {
  rm -rf "$D/data"
  RUST_LOG=warn $1 --dev --port-base ${PORT_BASE:-9121} --data-dir "$D/data" --fsync "$POLICY" & local p=$!
  sleep 0.7
  target/release/examples/loopback_bench --threads 2 --window 32 --seconds "$S" --mode "$MODE" \
    --target 127.0.0.1:${PORT_BASE:-9121} --prefix "r$RANDOM-" >"$D/out"
  # The rate, then (mix) the SETs' p50 and mean latency.
  echo "$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' "$D/out") $(sed -n 's/^set: n=[0-9]* p50=\([0-9]*us\).*mean=\([0-9]*us\) \/ test.*/SET p50 \1 mean \2/p' "$D/out")"
  kill -INT $p; wait $p
}
echo "A/B $POLICY $MODE: before=$A after=$B, $(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg)"
ratios=""
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then a=$(rate "$A"); b=$(rate "$B"); else b=$(rate "$B"); a=$(rate "$A"); fi
  ratio=$(awk -v a="${a%% *}" -v b="${b%% *}" 'BEGIN {printf "%.2f", (a > 0 ? b / a : 0)}')
  ratios="$ratios $ratio"
  echo "round $r: before ${a%% *}/s ${a#* }, after ${b%% *}/s ${b#* }, after/before $ratio [load $(cut -d' ' -f1 /proc/loadavg)]"
done
echo "$ratios" | tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {printf "median after/before: %s\n", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'
