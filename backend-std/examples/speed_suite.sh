#!/bin/bash
# Issue 10's ratios, side by side in one run: the null node (decode and answer) and the
# enforcer under fsync always and interval, driven by the same client; one fdatasync on the
# same disk for the window-1 SET latency. Build first:
#   cargo build --release -p backend-std --bins --examples
set -u
cd "$(dirname "$0")/../.."
S=${SECONDS_EACH:-5}
B=target/release/examples/loopback_bench
E=target/release/dqe-enforcer
run() { echo "### $*"; $B "$@" 2>&1 | tail -3; }
date -u; uptime
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
target/release/examples/fsync_probe "$D" 2000
null() {
  target/release/examples/null_node 127.0.0.1:9391 2>/dev/null & NN=$!
  sleep 0.5
  run --target 127.0.0.1:9391 --mode mix --window 32 --seconds $S --prefix nm-
  run --target 127.0.0.1:9391 --mode test --window 32 --seconds $S --prefix nt-
  kill $NN
}
# The null node before and after the enforcer runs: the load of other work drifts.
null
for policy in always interval; do
  rm -rf "$D/data"
  RUST_LOG=warn $E --dev --port-base 9101 --data-dir "$D/data" --fsync $policy & NP=$!
  sleep 1
  run --target 127.0.0.1:9101 --mode mix --window 32 --seconds $S --prefix $policy-m-
  run --target 127.0.0.1:9101 --mode test --window 32 --seconds $S --prefix $policy-t-
  run --target 127.0.0.1:9101 --mode set --window 1 --seconds $S --prefix $policy-1-
  kill -INT $NP; wait $NP
done
null
target/release/examples/fsync_probe "$D" 2000
rm -rf "$D"
uptime
