#!/bin/bash
# Quiet-machine loopback run: echo, TEST, SET (fsync always/never), RSS at 1M pairs.
set -u
cd "$(dirname "$0")/../.."  # the workspace root; build first: cargo build --release -p backend-std --bins --examples
B=target/release/examples/loopback_bench
E=target/release/dqe-enforcer
run() { echo "### $*"; $B "$@" 2>&1 | tail -12; }
uptime
target/release/examples/udp_echo 127.0.0.1:9391 2>/dev/null & EP=$!
sleep 0.5
run --target 127.0.0.1:9391 --mode echo --window 32 --seconds 10
run --target 127.0.0.1:9391 --mode echo --window 128 --seconds 10
kill $EP
D=$(mktemp -d)
RUST_LOG=warn $E --dev --port-base 9101 --data-dir $D & NP=$!
sleep 1
run --target 127.0.0.1:9101 --mode set --window 32 --seconds 10 --prefix s-
run --target 127.0.0.1:9101 --mode set --window 128 --seconds 10 --prefix s128-
run --target 127.0.0.1:9101 --mode test --window 32 --seconds 10 --prefix s- --keys 30000
run --target 127.0.0.1:9101 --mode test --window 32 --seconds 10 --prefix absent-
kill -INT $NP; wait $NP; rm -rf $D
D=$(mktemp -d)
RUST_LOG=warn $E --dev --port-base 9101 --data-dir $D --fsync never & NP=$!
sleep 1
run --target 127.0.0.1:9101 --mode set --window 32 --seconds 10 --prefix n-
kill -INT $NP; wait $NP; rm -rf $D
D=$(mktemp -d)
RUST_LOG=warn $E --dev --port-base 9101 --data-dir $D --fsync never & NP=$!
sleep 1
$B --target 127.0.0.1:9101 --mode test --window 32 --count 1000 --prefix warm- >/dev/null 2>&1
echo "### RSS before: $(grep VmRSS /proc/$NP/status)"
run --target 127.0.0.1:9101 --mode set --window 32 --count 1000000 --seconds 120 --prefix m-
echo "### RSS after: $(grep VmRSS /proc/$NP/status)"
kill -INT $NP; wait $NP; rm -rf $D
target/release/examples/udp_echo 127.0.0.1:9391 2>/dev/null & EP=$!
sleep 0.5
run --target 127.0.0.1:9391 --mode echo --window 32 --seconds 10
kill $EP
uptime
