#!/usr/bin/env bash
# Run the black-box conformance checker against a one-node `--dev` enforcer (one event loop,
# then two: --workers 2) and a three-node
# loopback cluster started with `dqe cluster up`, using the binaries of PROFILE (debug by default).
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
profile="${1:-debug}"
bin="$root/target/$profile"
here="$root/tests/conformance"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() { # wait until something listens on UDP port $1 (at most 10 s)
  for _ in $(seq 100); do
    ss -Hlun "sport = :$1" | grep -q . && return 0
    sleep 0.1
  done
  echo "nothing listens on udp port $1" >&2
  return 1
}

"$bin/dqe-enforcer" --dev --port-base 9501 --data-dir "$work/dev" >"$work/dev.log" 2>&1 &
pids+=($!)
wait_port 9501
# The tag the node logs at start-up, for check.py to compare with its own computation.
dev_tag=""
for _ in $(seq 100); do
  dev_tag="$(grep -o 'cluster_tag=0x[0-9a-f]*' "$work/dev.log" | head -1 | cut -d= -f2)" || true
  [ -n "$dev_tag" ] && break
  sleep 0.1
done
python3 "$here/check.py" dev 9501 dev $dev_tag

# The same checks against a node run as two event loops (--workers 2): the kernel steers
# each key to one of them, which must not show on the wire.
"$bin/dqe-enforcer" --dev --port-base 9511 --workers 2 --data-dir "$work/dev2" >"$work/dev2.log" 2>&1 &
pids+=($!)
wait_port 9511
dev2_tag=""
for _ in $(seq 100); do
  dev2_tag="$(grep -o 'cluster_tag=0x[0-9a-f]*' "$work/dev2.log" | head -1 | cut -d= -f2)" || true
  [ -n "$dev2_tag" ] && break
  sleep 0.1
done
python3 "$here/check.py" dev 9511 dev $dev2_tag

gen="$("$bin/dqe" config gen --nodes 3 --replication 2 --base-port 9601 --out "$work/c3.toml")"
c3_tag="$(grep -o 'cluster tag 0x[0-9a-f]*' <<<"$gen" | cut -d' ' -f3)"
"$bin/dqe" cluster up --config "$work/c3.toml" --data-root "$work/c3" >"$work/c3.log" 2>&1 &
pids+=($!)
for port in 9601 9604 9607; do wait_port "$port"; done
python3 "$here/check.py" cluster "$work/c3.toml" $c3_tag
