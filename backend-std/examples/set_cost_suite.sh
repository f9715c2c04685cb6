#!/bin/bash
# Issue 10: what one request costs the node, by request type (TEST of absent keys, SET of
# fresh keys, the 50/50 mix) against the batched null node, counted over a fixed number of
# requests so that the figures do not depend on the machine's load:
#   - CPU per request, user and kernel (/proc/PID/stat of the node, every thread);
#   - system calls, context switches and task-clock per request (perf stat on the node);
#   - thread wake-ups of the node's group-commit threads (context switches of threads other
#     than the loop's);
#   - with CALLGRIND=1 (NATIVE=0: only this), user-space instructions per request under callgrind (slow: about
#     a minute a line), counters zeroed after a warm-up and dumped after the counted run.
# Build first: cargo build --release -p backend-std --bins --examples
# ENFORCER=path overrides the enforcer binary (before/after); COUNT=N requests a line.
set -u
cd "$(dirname "$0")/../.."
COUNT=${COUNT:-200000}
B=target/release/examples/loopback_bench
E=${ENFORCER:-target/release/dqe-enforcer}
N=target/release/examples/null_node
PORT=9141
TICK=$(getconf CLK_TCK)
load() { cut -d' ' -f1-3 /proc/loadavg; }
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
trap 'rm -rf "$D"' EXIT
# utime+stime of process $1 in clock ticks, "user sys".
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
# Voluntary + involuntary context switches of every thread of $1 but the first named $2.
switches() {
  local total=0
  for t in /proc/"$1"/task/*; do
    [ "$(cat "$t/comm")" = "$2" ] && continue
    total=$((total + $(awk '/ctxt_switches/ {s += $2} END {print s}' "$t/status")))
  done
  echo $total
}
# measure LABEL PID LOOPNAME BENCH-ARGS...: one counted run against the process PID.
measure() {
  local label=$1 pid=$2 loop=$3; shift 3
  $B --threads 1 --window 32 --count 20000 --seconds 30 --prefix "w$RANDOM-" "$@" >/dev/null
  local before after hop0 hop1
  before=$(cpu "$pid"); hop0=$(switches "$pid" "$loop")
  perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter -p "$pid" \
    -o "$D/perf" 2>/dev/null & local ps=$!
  sleep 0.2
  local out
  out=$($B --threads 2 --window 32 --count "$COUNT" --seconds 120 --prefix "c$RANDOM-" "$@" | tail -1)
  kill -INT $ps; wait $ps 2>/dev/null
  after=$(cpu "$pid"); hop1=$(switches "$pid" "$loop")
  local answered rate
  answered=$(echo "$out" | sed -n 's/.*answered=\([0-9]*\).*/\1/p')
  rate=$(echo "$out" | sed -n 's/.*rate=\([0-9]*\).*/\1/p')
  awk -F, -v l="$label" -v n="$answered" -v r="$rate" -v b="$before" -v a="$after" \
    -v t="$TICK" -v h0="$hop0" -v h1="$hop1" -v ld="$(load)" '
    $3 == "task-clock" {clk = $1}
    $3 == "context-switches" {cs = $1}
    $3 == "raw_syscalls:sys_enter" {sc = $1}
    END {
      split(b, B, " "); split(a, A, " ")
      us = (A[1] - B[1]) / t * 1e6 / n; ss = (A[2] - B[2]) / t * 1e6 / n
      printf "%-28s n=%d rate=%d/s  cpu/req: user %.2f us, kernel %.2f us (task-clock %.2f us)  syscalls/req %.3f  ctx-switches/req %.3f  commit-thread switches/req %.3f  [load %s]\n",
        l, n, r, us, ss, clk * 1000 / n, sc / n, cs / n, (h1 - h0) / n, ld
    }' "$D/perf"
}
date -u; uptime
if [ "${NATIVE:-1}" = 1 ]; then
$N 127.0.0.1:$PORT --batch 2>/dev/null & NP=$!
sleep 0.5
for mode in test set mix; do measure "null $mode" $NP null_node --target 127.0.0.1:$PORT --mode $mode; done
kill $NP; wait $NP 2>/dev/null
for policy in never interval always; do
  rm -rf "$D/data"
  RUST_LOG=warn $E --dev --port-base $PORT --data-dir "$D/data" --fsync $policy & NP=$!
  sleep 1
  for mode in test set mix; do
    measure "enforcer $policy $mode" $NP dqe-node --target 127.0.0.1:$((PORT)) --mode $mode
  done
  kill -INT $NP; wait $NP
done
fi
if [ "${CALLGRIND:-0}" = 1 ]; then
  # User-space instructions per request: one client thread, a small window (the node runs
  # ~50x slower under valgrind), counters zeroed after a warm-up.
  CG=${CG_COUNT:-20000}
  cg() {
    local label=$1 pid=$2; shift 2
    $B --threads 1 --window 8 --count 2000 --seconds 120 --timeout-ms 20000 --prefix "w$RANDOM-" "$@" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    $B --threads 1 --window 8 --count "$CG" --seconds 600 --timeout-ms 20000 --prefix "c$RANDOM-" "$@" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    local f ir
    f=$(ls -t "$D"/cg.out.* | head -1)
    ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
    printf "%-28s instructions/req (user, callgrind): %d  (%s)\n" "$label" $((ir / CG)) "$f"
  }
  valgrind --tool=callgrind --callgrind-out-file="$D/cg.out.%p" $N 127.0.0.1:$PORT --batch 2>/dev/null & NP=$!
  sleep 2
  for mode in test set; do cg "null-$mode" $NP --target 127.0.0.1:$PORT --mode $mode; done
  kill $NP; wait $NP 2>/dev/null
  for policy in interval always; do
    rm -rf "$D/data"
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$D/cg.out.%p" \
      $E --dev --port-base $PORT --data-dir "$D/data" --fsync $policy 2>/dev/null & NP=$!
    sleep 8
    for mode in test set; do cg "$policy-$mode" $NP --target 127.0.0.1:$PORT --mode $mode; done
    kill -INT $NP; wait $NP 2>/dev/null
  done
  [ -n "${KEEP_CG:-}" ] && cp "$D"/cg.out* "$KEEP_CG"/
fi
uptime
