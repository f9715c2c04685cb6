#!/bin/bash
# Issue 10's throughput ratios side by side in one run: the null node (decode and answer;
# plain one-syscall-per-datagram, and batched like the enforcer) and dqe-enforcer under
# `--fsync interval` and `always`, all driven by the same multi-threaded loopback_bench;
# system calls per answered request of the enforcer (perf stat on raw_syscalls:sys_enter)
# and the load average next to every figure. Build first:
#   cargo build --release -p backend-std --bins --examples
# ENFORCER=path overrides the enforcer binary (e.g. an older build, for before/after).
set -u
cd "$(dirname "$0")/../.."
S=${SECONDS_EACH:-5}
T=${THREADS:-2}
B=target/release/examples/loopback_bench
E=${ENFORCER:-target/release/dqe-enforcer}
load() { cut -d' ' -f1-3 /proc/loadavg; }
run() {
  local label=$1; shift
  echo "### $label [load $(load)]"
  $B --threads "$T" "$@" 2>&1 | tail -1
}
date -u; uptime
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
nulls() {
  for kind in plain batch; do
    flag=""; [ $kind = batch ] && flag=--batch
    target/release/examples/null_node 127.0.0.1:9391 $flag 2>/dev/null & NN=$!
    sleep 0.5
    run "null-$kind mix" --target 127.0.0.1:9391 --mode mix --window 32 --seconds "$S" --prefix nm-
    run "null-$kind test" --target 127.0.0.1:9391 --mode test --window 32 --seconds "$S" --prefix nt-
    kill $NN; wait $NN 2>/dev/null
  done
}
# The null nodes before and after the enforcer runs: the load of other work drifts.
nulls
for policy in interval always; do
  rm -rf "$D/data"
  RUST_LOG=warn $E --dev --port-base 9101 --data-dir "$D/data" --fsync $policy & NP=$!
  sleep 1
  for mode in mix test; do
    if command -v perf >/dev/null; then
      perf stat -e raw_syscalls:sys_enter -p $NP -o "$D/perf" -- sleep "$S" 2>/dev/null & PS=$!
    fi
    run "enforcer --fsync $policy $mode" --target 127.0.0.1:9101 --mode $mode --window 32 --seconds "$S" --prefix $policy-$mode-
    if [ -n "${PS:-}" ]; then
      wait $PS
      echo "enforcer system calls in ${S}s: $(awk '/raw_syscalls/ {print $1}' "$D/perf")"
      PS=
    fi
  done
  kill -INT $NP; wait $NP
done
nulls
rm -rf "$D"
uptime
