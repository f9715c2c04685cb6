#!/bin/bash
# Issue 10's "1 vs 2 workers" in one process: dqe-enforcer --workers 1 against --workers 2
# (N event loops on one set of ports, SO_REUSEPORT steered by key; backend-std/src/workers.rs),
# alternating, driven by the same client (loopback_bench, 2 threads, window 32 in all), TEST
# only and half TEST / half SET, then the null node (decode and answer, batched) as the
# client's ceiling. Load average next to every figure, and the enforcer's CPU time per
# answered request (user + system, all its threads: what the split costs, which other load on
# the machine moves far less than the rates) and its system calls per request (with perf);
# ends with the 2-over-1 ratios.
# About 2.5 minutes with the defaults. Build first:
#   cargo build --release -p backend-std --bins --examples
# FSYNC=interval|always|never (default interval), SECONDS_EACH (5), ROUNDS (2).
set -u
cd "$(dirname "$0")/../.."
S=${SECONDS_EACH:-5}
R=${ROUNDS:-2}
B=target/release/examples/loopback_bench
E=${ENFORCER:-target/release/dqe-enforcer}
P=${FSYNC:-interval}
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
load() { cut -d' ' -f1-3 /proc/loadavg; }
declare -A RATE CPU CALLS
HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run() {
  local label=$1; shift
  out=$($B --threads 2 --window 32 --seconds "$S" "$@" 2>&1 | tail -1)
  echo "### $label [load $(load)]"
  echo "$out"
  RATE[$label]="${RATE[$label]:-} $(echo "$out" | sed -n 's/.*rate=\([0-9]*\).*/\1/p')"
}
date -u; uptime; nproc
for round in $(seq "$R"); do
  for mode in test mix; do
    for w in 1 2; do
      rm -rf "$D/data"
      RUST_LOG=warn $E --dev --port-base 9161 --data-dir "$D/data" --fsync "$P" --workers $w & N=$!
      sleep 1
      kill -0 $N 2>/dev/null || { echo "the enforcer did not start (ports 9161-9163 in use?)"; continue; }
      t0=$(ticks $N)
      PS=
      if command -v perf >/dev/null; then
        perf stat -e raw_syscalls:sys_enter -p $N -o "$D/perf" -- sleep "$S" 2>/dev/null & PS=$!
      fi
      run "workers=$w $mode" --target 127.0.0.1:9161 --mode $mode --prefix r$round$w$mode-
      t1=$(ticks $N)
      answered=$(sed -n 's/.*answered=\([0-9]*\).*/\1/p' <<<"$out")
      cpu=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v n="${answered:-0}" 'BEGIN { if (n) printf "%.1f", t * 1e6 / hz / n; else print 0 }')
      calls=""
      if [ -n "$PS" ]; then
        wait $PS
        calls=$(awk -v n="${answered:-0}" '/raw_syscalls/ { gsub(",", "", $1); if (n) printf "%.2f", $1 / n }' "$D/perf")
      fi
      echo "enforcer per answered request: CPU ${cpu} us, system calls ${calls:-?}"
      CPU[workers=$w $mode]="${CPU[workers=$w $mode]:-} $cpu"
      CALLS[workers=$w $mode]="${CALLS[workers=$w $mode]:-} ${calls:-?}"
      kill -INT $N; wait $N
    done
  done
done
# Ports of its own (9161-9163, 9491): the other suites use 9101 and 9391.
target/release/examples/null_node 127.0.0.1:9491 --batch 2>/dev/null & NN=$!
sleep 0.5
kill -0 $NN 2>/dev/null || echo "the null node did not start (port 9491 in use?)"
for mode in test mix; do
  run "null-batch $mode" --target 127.0.0.1:9491 --mode $mode --prefix n$mode-
done
kill $NN; wait $NN 2>/dev/null
rm -rf "$D"
mean() { awk '{s=0; for (i=1;i<=NF;i++) s+=$i; if (NF) printf "%.0f", s/NF}' <<<"$1"; }
echo "### summary (fsync $P, mean of $R rounds; rates in requests/s)"
for mode in test mix; do
  one=$(mean "${RATE[workers=1 $mode]}"); two=$(mean "${RATE[workers=2 $mode]}")
  null=$(mean "${RATE[null-batch $mode]}")
  awk -v m=$mode -v a="$one" -v b="$two" -v n="$null" \
    'BEGIN { printf "%-5s 1 worker %7d  2 workers %7d  (%.2fx)  null node %7d\n", m, a, b, b/a, n }'
  echo "      enforcer CPU us/request: 1 worker${CPU[workers=1 $mode]}; 2 workers${CPU[workers=2 $mode]}"
  echo "      system calls/request:     1 worker${CALLS[workers=1 $mode]}; 2 workers${CALLS[workers=2 $mode]}"
done
uptime
