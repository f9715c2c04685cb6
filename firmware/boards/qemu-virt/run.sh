#!/usr/bin/env bash
# Run the qemu-virt board for one node of a cluster file on an existing TAP device, in the
# foreground, until killed. Builds the image first (cargo does nothing when it is current).
#
#   firmware/boards/qemu-virt/run.sh --tap TAP --config cluster.toml --node NAME [--mac MAC]
#
# The TAP device must exist (ip tuntap add name TAP mode tap) and be up; the board's address
# is its node's address in the cluster file. The console (boot line, counters, panics) is
# this script's standard output. QEMU exits non-zero when the firmware cannot start.
set -euo pipefail

usage() {
  echo "usage: $0 --tap TAP --config CLUSTER.toml --node NAME [--mac MAC]" >&2
  exit 2
}
tap=""
config=""
node=""
mac=""
while [ $# -gt 0 ]; do
  case $1 in
    --tap) [ $# -ge 2 ] || usage; tap=$2; shift 2 ;;
    --config) [ $# -ge 2 ] || usage; config=$2; shift 2 ;;
    --node) [ $# -ge 2 ] || usage; node=$2; shift 2 ;;
    --mac) [ $# -ge 2 ] || usage; mac=$2; shift 2 ;;
    *) echo "unexpected argument: $1" >&2; usage ;;
  esac
done
[ -n "$tap" ] || { echo "missing --tap TAP" >&2; usage; }
[ -n "$config" ] || { echo "missing --config CLUSTER.toml" >&2; usage; }
[ -n "$node" ] || { echo "missing --node NAME" >&2; usage; }
command -v qemu-system-riscv32 >/dev/null || {
  echo "qemu-system-riscv32 is missing: apt-get install -y --no-install-recommends qemu-system-misc" >&2
  exit 1
}

here=$(cd "$(dirname "$0")" && pwd)
elf=$("$here/../build.sh" qemu-virt --config "$config" --node "$node" | tail -n 1)
# A MAC from the node's name unless given: stable across restarts, distinct per node.
if [ -z "$mac" ]; then
  h=$(printf '%s' "$node" | cksum | cut -d' ' -f1)
  mac=$(printf '52:54:00:%02x:%02x:%02x' $(((h >> 16) & 255)) $(((h >> 8) & 255)) $((h & 255)))
fi

exec qemu-system-riscv32 -M virt -m 16M -bios none -display none -monitor none -serial stdio \
  -kernel "$elf" \
  -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" \
  -device "virtio-net-device,netdev=n0,mac=$mac" \
  -device virtio-rng-device
