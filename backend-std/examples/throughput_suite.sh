#!/bin/bash
# Issue 10's throughput ratios side by side in one run: the null node (decode and answer;
# plain one-syscall-per-datagram, and batched like the enforcer) and dqe-enforcer under
# `--fsync interval` and `always`, all driven by the same multi-threaded loopback_bench;
# system calls per answered request of the enforcer (perf stat on raw_syscalls:sys_enter)
# and the load average next to every figure. Build first:
#   cargo build --release -p backend-std --bins --examples
# ENFORCER=path overrides the enforcer binary; BEFORE=path runs a second one beside it (A/B).
# PORT_BASE (9101, the enforcer's) and NULL_PORT (9391): other ports when another run uses these.
# Ends with the ratios of issue 10's targets: each enforcer rate over the mean of the null
# node's rates (batched, and plain) for the same load, measured before and after it.
# ROUNDS=N (1): N rounds of the enforcers, each followed by the null nodes again, so that every
# enforcer figure is bracketed by null figures taken just before and after it; with N > 1 the
# summary gives each round's ratio against its own bracket and their median (5 s figures on a
# shared VM drift by a third from one run to the next; a median of bracketed ratios does not).
set -u
cd "$(dirname "$0")/../.."
S=${SECONDS_EACH:-5}
T=${THREADS:-2}
B=target/release/examples/loopback_bench
E=${ENFORCER:-target/release/dqe-enforcer}
PB=${PORT_BASE:-9101}
NP0=${NULL_PORT:-9391}
load() { cut -d' ' -f1-3 /proc/loadavg; }
declare -A RATE
# RATE[label] lists the label's rates in run order; ROUND (0 for the first null nodes) is the
# round a figure belongs to, and RATE[label#round] keeps that round's figure alone.
ROUND=0
run() {
  local label=$1; shift
  echo "### $label (round $ROUND) [load $(load)]"
  local out r
  out=$($B --threads "$T" "$@" 2>&1 | tail -2)
  echo "$out"
  r=$(echo "$out" | sed -n 's/.*rate=\([0-9]*\).*/\1/p')
  RATE[$label]="${RATE[$label]:-} $r"
  RATE[$label#$ROUND]=$r
}
date -u; uptime
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
nulls() {
  for kind in plain batch; do
    flag=""; [ $kind = batch ] && flag=--batch
    target/release/examples/null_node 127.0.0.1:$NP0 $flag 2>/dev/null & NN=$!
    sleep 0.5
    run "null-$kind mix" --target 127.0.0.1:$NP0 --mode mix --window 32 --seconds "$S" --prefix nm-
    run "null-$kind test" --target 127.0.0.1:$NP0 --mode test --window 32 --seconds "$S" --prefix nt-
    kill $NN; wait $NN 2>/dev/null
  done
}
# The null nodes before and after the enforcer runs: the load of other work drifts.
nulls
# BEFORE=path: also run that enforcer binary, alternating with the other one, and print
# its ratios too (A/B in one run).
enforcers() {
  for policy in interval always; do
    for who in ${BEFORE:+before} enforcer; do
      local bin=$E
      [ "$who" = before ] && bin=$BEFORE
      rm -rf "$D/data"
      RUST_LOG=warn $bin --dev --port-base $PB --data-dir "$D/data" --fsync $policy & NP=$!
      sleep 1
      for mode in mix test; do
        if command -v perf >/dev/null; then
          perf stat -e raw_syscalls:sys_enter -p $NP -o "$D/perf" -- sleep "$S" 2>/dev/null & PS=$!
        fi
        run "$who --fsync $policy $mode" --target 127.0.0.1:$PB --mode $mode --window 32 --seconds "$S" --prefix $policy-$mode-
        if [ -n "${PS:-}" ]; then
          wait $PS
          echo "$who system calls in ${S}s: $(awk '/raw_syscalls/ {print $1}' "$D/perf")"
          PS=
        fi
      done
      kill -INT $NP; wait $NP
    done
  done
}
ROUNDS=${ROUNDS:-1}
for ROUND in $(seq 1 "$ROUNDS"); do
  enforcers
  nulls
done
# The disk's hour: the `always` mix follows one fdatasync's time, which on this VM moves
# tenfold from hour to hour (docs/BENCHMARKS.md, issue 10).
echo "### one fdatasync on the same disk (fsync_probe, 1000 syncs) [load $(load)]"
echo "idle:  $(target/release/examples/fsync_probe "$D" 1000 sync 2>&1 | tail -1)"
echo "awake: $(taskset -c 0 target/release/examples/fsync_probe "$D" 1000 sync awake 2>&1 | tail -1)"
rm -rf "$D"
mean() { echo "$1" | awk '{s = 0; for (i = 1; i <= NF; i++) s += $i; if (NF) printf "%.0f", s / NF}'; }
echo "### ratios (enforcer rate / mean null rate, same load)"
printf "%-24s %12s %16s %14s  %s\n" load enforcer/s "vs batched null" "vs plain null" target
for who in ${BEFORE:+before} enforcer; do
  for policy in interval always; do
    for mode in mix test; do
      e=$(mean "${RATE[$who --fsync $policy $mode]:-}")
      nb=$(mean "${RATE[null-batch $mode]:-}")
      np=$(mean "${RATE[null-plain $mode]:-}")
      target=""
      case $policy-$mode in
        interval-mix) target="0.8" ;;
        always-mix) target="0.6" ;;
        *-test) target="0.9" ;;
      esac
      awk -v l="$who $policy $mode" -v e="${e:-0}" -v nb="${nb:-0}" -v np="${np:-0}" -v t="$target" 'BEGIN {
        rb = nb > 0 ? e / nb : 0; rp = np > 0 ? e / np : 0
        printf "%-24s %12d %16.2f %14.2f  %s%s\n", l, e, rb, rp, t, (t == "" ? "" : (rb >= t ? ": met" : ": not met"))
      }'
    done
  done
done
if [ "$ROUNDS" -gt 1 ]; then
  echo "### each round's ratio against the batched null node just before and after it; median"
  for who in ${BEFORE:+before} enforcer; do
    for policy in interval always; do
      for mode in mix test; do
        rs=""
        for i in $(seq 1 "$ROUNDS"); do
          e=${RATE[$who --fsync $policy $mode#$i]:-0}
          n0=${RATE[null-batch $mode#$((i - 1))]:-0}
          n1=${RATE[null-batch $mode#$i]:-0}
          rs="$rs $(awk -v e="$e" -v a="$n0" -v b="$n1" 'BEGIN {m = (a + b) / 2; printf "%.2f", (m > 0 ? e / m : 0)}')"
        done
        med=$(echo $rs | tr ' ' '\n' | sort -n | awk '{v[NR] = $1} END {print NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}')
        printf "%-24s rounds%s  median %.2f\n" "$who $policy $mode" "$rs" "$med"
      done
    done
  done
fi
uptime
