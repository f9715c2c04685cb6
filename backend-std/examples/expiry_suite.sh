#!/bin/bash
# Issue 10: does an epoch expiry with a million pairs stored move the p99 of a running load?
# One node (r = 1, --fsync interval), epochs of EPOCH_S seconds (default 30) kept for one
# epoch, so the pairs of epoch E expire when E + 1 starts. Started just after a boundary, the
# node is filled with PAIRS (default 10^6) fresh pairs; from LEAD_S seconds (default 10) before
# the next boundary a 50/50 TEST/SET load at window 32 runs in consecutive WINDOW_S-second
# windows (default 2) across it; each line gives the window's start relative to the boundary,
# its p99, and the load average. ENFORCER picks the binary (default target/release/dqe-enforcer).
# Build first:
#   cargo build --release -p backend-std --bins --examples
set -u
cd "$(dirname "$0")/../.."
EPOCH_S=${EPOCH_S:-30}
PAIRS=${PAIRS:-1000000}
W=${WINDOW_S:-2}
LEAD_S=${LEAD_S:-10}
P=${PORT_BASE:-9701}
E=${ENFORCER:-target/release/dqe-enforcer}
X=target/release/examples
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
cat > "$D/cluster.toml" <<TOML
[cluster]
replication = 1
epoch_seconds = $EPOCH_S
grace = 0
retain_epochs = 1
[[nodes]]
name = "n1"
portal = "127.0.0.1:$P"
storer = "127.0.0.1:$((P + 1))"
source = "127.0.0.1:$((P + 2))"
TOML
# Wait for the start of an epoch.
while [ $(( $(date +%s) % EPOCH_S )) -ne 0 ]; do sleep 0.2; done
RUST_LOG=info $E --config "$D/cluster.toml" --node n1 \
  --data-dir "$D/data" --fsync interval 2> "$D/node.log" & NP=$!
sleep 0.5
start=$(date +%s)
boundary=$(( (start / EPOCH_S + 1) * EPOCH_S ))
echo "fill: $($X/loopback_bench --target 127.0.0.1:$P --mode set --window 64 --count "$PAIRS" --seconds 1000 --prefix fill- | sed 's/ target=[^ ]*//; s/ outcomes=.*//')"
echo "filled $(( $(date +%s) - start )) s after the start; boundary at +$(( boundary - start )) s"
while [ "$(date +%s)" -lt $(( boundary - LEAD_S )) ]; do sleep 0.2; done
end=$(( boundary + 4 * W + 8 ))
i=0
while [ "$(date +%s)" -lt $end ]; do
  t=$(python3 -c "import time; print('%+.1f' % (time.time() - $boundary))")
  line=$($X/loopback_bench --target 127.0.0.1:$P --mode mix --window 32 --seconds "$W" --prefix "w$i-" | tail -1 | sed 's/ target=[^ ]*//; s/seconds=[^ ]* //; s/ outcomes=.*//')
  echo "t=$t s load=$(cut -d' ' -f1 /proc/loadavg) $line"
  i=$((i + 1))
done
kill -INT $NP; wait $NP
grep -E "new epoch|expired|deleted" "$D/node.log" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200
rm -rf "$D"
