#!/bin/bash
# Issue 10: how long one group commit takes inside a node under the `always` mix, against
# one fdatasync of the same disk. Each round: the batched null node and a fresh `--dev
# --fsync always` node under `loopback_bench --mode mix --window 32` (5 s each); the node's
# `dqe_fsync_batches_total` and `dqe_synced_records_total` before and after give the group
# commits a second, the cycle (a second over them: under this load one follows the other) and
# the records per sync; then `fsync_probe` (awake, on CPU 0) with 14
# records and with 1 on the same disk. Build first:
#   cargo build --release -p backend-std --bins --examples
# PORT_BASE (9181), METRICS_PORT (9199), NULL_PORT (9191), ROUNDS (3), DATA_PARENT (/work).
set -u
cd "$(dirname "$0")/../.."
B=target/release/examples/loopback_bench
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
trap 'rm -rf "$D"' EXIT
MP=${METRICS_PORT:-9199}; PB=${PORT_BASE:-9181}; NP=${NULL_PORT:-9191}
scrape() { curl -s http://127.0.0.1:$MP/metrics | awk -v k="$1" '$1==k {print $2}'; }
date -u; cut -d' ' -f1-3 /proc/loadavg
for round in $(seq 1 "${ROUNDS:-3}"); do
  echo "## round $round [load $(cut -d' ' -f1-3 /proc/loadavg)]"
  target/release/examples/null_node 127.0.0.1:$NP --batch 2>/dev/null & NN=$!; sleep 0.5
  $B --threads 2 --target 127.0.0.1:$NP --mode mix --window 32 --seconds 5 --prefix b$round- 2>&1 | tail -1 | sed 's/^/null-batch mix: /'
  kill $NN; wait $NN 2>/dev/null
  rm -rf $D/data
  RUST_LOG=warn target/release/dqe-enforcer --dev --port-base $PB --data-dir $D/data --fsync always --metrics 127.0.0.1:$MP & EP=$!; sleep 1
  b0=$(scrape dqe_fsync_batches_total); r0=$(scrape dqe_synced_records_total); t0=$(date +%s.%N)
  $B --threads 2 --target 127.0.0.1:$PB --mode mix --window 32 --seconds 5 --prefix a$round- 2>&1 | tail -2 | sed 's/^/always mix: /'
  t1=$(date +%s.%N); b1=$(scrape dqe_fsync_batches_total); r1=$(scrape dqe_synced_records_total)
  kill -INT $EP; wait $EP
  awk -v b=$((b1-b0)) -v r=$((r1-r0)) -v t0=$t0 -v t1=$t1 'BEGIN {d=t1-t0; printf "syncs %d in %.2f s: %.0f/s, cycle %.0f us, records/sync %.1f\n", b, d, b/d, d/b*1e6, r/b}'
  RECORDS=14 taskset -c 0 target/release/examples/fsync_probe $D 1000 sync awake 2>&1 | tail -1 | sed 's/^/probe RECORDS=14 awake: /'
  taskset -c 0 target/release/examples/fsync_probe $D 1000 sync awake 2>&1 | tail -1 | sed 's/^/probe 1 record awake: /'
done
