#!/bin/bash
# Issue 10's "1 vs 2 workers", with the worker as a ring member: one dqe-enforcer (one event
# loop) against two on the same machine in one cluster (r = 1, keys split by the ring, a
# request for the other worker's key crosses to its storer as it would to any node), driven
# by the same total client: window 32 over 2 client threads. Load average next to every
# figure. Build first: cargo build --release -p backend-std --bins --examples
set -u
cd "$(dirname "$0")/../.."
S=${SECONDS_EACH:-5}
B=target/release/examples/loopback_bench
E=${ENFORCER:-target/release/dqe-enforcer}
P=${FSYNC:-interval}
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
load() { cut -d' ' -f1-3 /proc/loadavg; }
cat > "$D/cluster.toml" <<TOML
[cluster]
replication = 1

[[nodes]]
name = "w1"
portal = "127.0.0.1:9201"
storer = "127.0.0.1:9202"
source = "127.0.0.1:9203"

[[nodes]]
name = "w2"
portal = "127.0.0.1:9204"
storer = "127.0.0.1:9205"
source = "127.0.0.1:9206"
TOML
date -u; uptime
for round in 1 2; do
  for mode in test mix; do
    RUST_LOG=warn $E --dev --port-base 9201 --data-dir "$D/one" --fsync $P & N1=$!
    sleep 1
    echo "### 1 worker, $mode [load $(load)]"
    $B --threads 2 --target 127.0.0.1:9201 --mode $mode --window 32 --seconds "$S" --prefix o$round$mode- | tail -1
    kill -INT $N1; wait $N1; rm -rf "$D/one"
    RUST_LOG=warn $E --config "$D/cluster.toml" --node w1 --data-dir "$D/w1" --fsync $P & N1=$!
    RUST_LOG=warn $E --config "$D/cluster.toml" --node w2 --data-dir "$D/w2" --fsync $P & N2=$!
    sleep 1.5
    echo "### 2 workers, $mode [load $(load)]"
    $B --threads 1 --target 127.0.0.1:9201 --mode $mode --window 16 --seconds "$S" --prefix a$round$mode- | tail -1 &
    C1=$!
    $B --threads 1 --target 127.0.0.1:9204 --mode $mode --window 16 --seconds "$S" --prefix b$round$mode- | tail -1
    wait $C1
    kill -INT $N1 $N2; wait $N1 $N2; rm -rf "$D/w1" "$D/w2"
  done
done
rm -rf "$D"
uptime
