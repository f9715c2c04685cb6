#!/bin/bash
# Issue 10's latency criterion in one run: one fdatasync on the data directory's disk
# (fsync_probe: idle, and awake with a spinner on its CPU) and the enforcer's `--fsync always`
# SET with one request in flight, side by side, in ROUNDS rounds; each round's ratios use that
# round's probes. Criterion: SET p50 <= 1.3 x one fdatasync, SET p99 <= 3 x one fdatasync
# ("one fdatasync" = the probe's p50; the strict yardstick is the lower of idle and awake).
# Also runs the enforcer with `--fsync-spin-us 0` (sync threads and loop sleep at once), and
# BASELINE=path (an older dqe-enforcer, e.g. before the sync threads) if given, for an A/B.
# The node polls only while the machine is not saturated (/proc/pressure/cpu "some" under
# 90%): on a saturated machine `spin` runs the same code as `nospin`.
# Every line carries the 1-minute load average. About 1 minute on a quiet machine (at most
# 3 with the defaults). Build first:
#   cargo build --release -p backend-std --bins --examples
# ROUNDS (3), SECONDS_EACH (5), DATA_PARENT (/work), PORT_BASE (9111), SYNCS (1000 a probe).
set -u
cd "$(dirname "$0")/../.."
R=${ROUNDS:-3}
S=${SECONDS_EACH:-5}
P=${PORT_BASE:-9111}
N=${SYNCS:-1000}
X=target/release/examples
E=target/release/dqe-enforcer
load() { cut -d' ' -f1 /proc/loadavg; }
# `key=value ...` -> the value of key, without "us".
field() { sed -n "s/.* $1=\([0-9.]*\)[a-z]*.*/\1/p" <<<" $2"; }
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
trap 'rm -rf "$D"' EXIT
variants=("spin=$E|" "nospin=$E|--fsync-spin-us 0")
[ -n "${BASELINE:-}" ] && variants+=("baseline=$BASELINE|")
date -u
echo "round line                load  p50_us p99_us  p50/sync p99/sync  (sync: the lower probe p50 of the round; node_cpu: cores busy)"
for r in $(seq "$R"); do
  idle=$($X/fsync_probe "$D" "$N" sync)
  li=$(load)
  # Pinned with its spinner to one CPU: that CPU never halts while the sync runs.
  awake=$(taskset -c 0 $X/fsync_probe "$D" "$N" sync awake)
  la=$(load)
  ip50=$(field p50 "$idle"); ap50=$(field p50 "$awake")
  sync=$(( ip50 < ap50 ? ip50 : ap50 ))
  printf '%-5s %-19s %-5s %6s %6s\n' "$r" probe-idle "$li" "$ip50" "$(field p99 "$idle")"
  printf '%-5s %-19s %-5s %6s %6s\n' "$r" probe-awake "$la" "$ap50" "$(field p99 "$awake")"
  # Each round starts with the next variant, so none is always the first after the probes.
  n=${#variants[@]}
  for k in $(seq 0 $((n - 1))); do
    v=${variants[$(((r - 1 + k) % n))]}
    label=${v%%=*}; rest=${v#*=}; bin=${rest%%|*}; args=${rest#*|}
    rm -rf "$D/data"
    # shellcheck disable=SC2086
    RUST_LOG=warn $bin --dev --port-base "$P" --data-dir "$D/data" --fsync always $args & NP=$!
    sleep 1
    out=$($X/loopback_bench --target "127.0.0.1:$P" --mode set --window 1 --seconds "$S" \
      --prefix "lat-$r-$label-" 2>&1 | tail -1)
    l=$(load)
    # The node's CPU time (user + system) over its run, in clock ticks (100 a second).
    cpu=$(awk '{print $14 + $15}' /proc/$NP/stat)
    kill -INT $NP; wait $NP
    p50=$(field p50 "$out"); p99=$(field p99 "$out")
    printf '%-5s %-19s %-5s %6s %6s  %8s %8s  %s\n' "$r" "always-w1-$label" "$l" "$p50" "$p99" \
      "$(awk -v a="$p50" -v b="$sync" 'BEGIN { printf "%.2f", a / b }')" \
      "$(awk -v a="$p99" -v b="$sync" 'BEGIN { printf "%.2f", a / b }')" \
      "rate=$(field rate "$out")/s node_cpu=$(awk -v t="$cpu" -v s="$S" 'BEGIN { printf "%.2f", t / 100 / (s + 1) }')"
  done
done | tee "$D/lines"
echo "medians over the rounds (target: p50/sync <= 1.3, p99/sync <= 3):"
for v in "${variants[@]}"; do
  label=${v%%=*}
  for col in 6 7; do
    awk -v l="always-w1-$label" '$2 == l' "$D/lines" | awk -v c=$col '{print $c}' | sort -g \
      | awk '{a[NR] = $1} END { printf "%s ", (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
  done | awk -v l="$label" '{ printf "  %-10s p50/sync %s  p99/sync %s\n", l, $1, $2 }'
done
date -u
