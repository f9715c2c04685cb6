#!/bin/bash
# Issue 10's durable-write figures side by side in one run: one fdatasync on the data
# directory's disk (fsync_probe, idle and with its CPU kept awake), the null node and the
# enforcer under `--fsync always` and `interval` driven by the same client: SET at one request
# in flight, then 50/50 TEST/SET at window 32. Every line carries the load average (the
# development machine is shared). Build first:
#   cargo build --release -p backend-std --bins --examples
# SECONDS_EACH (default 5), DATA_PARENT (default /work), PORT_BASE (default 9101).
set -u
cd "$(dirname "$0")/../.."
S=${SECONDS_EACH:-5}
P=${PORT_BASE:-9101}
X=target/release/examples
E=target/release/dqe-enforcer
load() { cut -d' ' -f1 /proc/loadavg; }
run() {
  printf '%-16s load=%-5s ' "$1" "$(load)"; shift
  $X/loopback_bench "$@" 2>&1 | tail -1 | sed 's/ target=[^ ]*//; s/seconds=[^ ]* //; s/ outcomes=.*//'
}
probe() {
  printf '%-16s load=%-5s %s\n' probe-idle "$(load)" "$($X/fsync_probe "$D" 2000 sync)"
  # Pinned with its spinner to one CPU: that CPU never halts while the sync runs.
  printf '%-16s load=%-5s %s\n' probe-awake "$(load)" "$(taskset -c 0 $X/fsync_probe "$D" 2000 sync awake)"
}
null() {
  $X/null_node 127.0.0.1:9391 2>/dev/null & NN=$!
  sleep 0.5
  run null-set-w1 --target 127.0.0.1:9391 --mode set --window 1 --seconds "$S" --prefix "n$1-"
  run null-mix-w32 --target 127.0.0.1:9391 --mode mix --window 32 --seconds "$S" --prefix "nm$1-"
  kill $NN; wait $NN 2>/dev/null
}
date -u
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
probe
null 1
for policy in always interval; do
  rm -rf "$D/data"
  RUST_LOG=warn $E --dev --port-base "$P" --data-dir "$D/data" --fsync $policy & NP=$!
  sleep 1
  run "$policy-set-w1" --target "127.0.0.1:$P" --mode set --window 1 --seconds "$S" --prefix "$policy-1-"
  run "$policy-mix-w32" --target "127.0.0.1:$P" --mode mix --window 32 --seconds "$S" --prefix "$policy-m-"
  kill -INT $NP; wait $NP
done
null 2
probe
rm -rf "$D"
date -u
