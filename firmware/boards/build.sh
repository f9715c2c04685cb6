#!/usr/bin/env bash
# Build a board's firmware image for one node of a cluster file.
#
#   firmware/boards/build.sh BOARD --config cluster.toml --node NAME
#
# BOARD is qemu-virt (riscv32imac-unknown-none-elf) or nucleo-h743zi (thumbv7em-none-eabihf).
# The cluster file is compiled in (firmware/build.rs validates it with the servers' parser);
# the node's address in it is the board's address. The last line printed is the ELF's path.
#
# Toolchain: a rustc that can build `core` for the target. By default the build uses Debian's
# rustc (/usr/bin/rustc, packages rustc-web cargo-web rust-web-src lld-22) with
# -Zbuild-std=core; set DQE_BOARD_TOOLCHAIN=rustup to use rustup's toolchain with an installed
# target instead (`rustup target add riscv32imac-unknown-none-elf thumbv7em-none-eabihf`).
set -euo pipefail

usage() {
  echo "usage: $0 BOARD --config CLUSTER.toml --node NAME   (BOARD: qemu-virt | nucleo-h743zi)" >&2
  exit 2
}

[ $# -ge 1 ] || usage
board=$1
shift
config=""
node=""
while [ $# -gt 0 ]; do
  case $1 in
    --config) [ $# -ge 2 ] || usage; config=$2; shift 2 ;;
    --node) [ $# -ge 2 ] || usage; node=$2; shift 2 ;;
    *) echo "unexpected argument: $1" >&2; usage ;;
  esac
done
[ -n "$config" ] || { echo "missing --config CLUSTER.toml" >&2; usage; }
[ -n "$node" ] || { echo "missing --node NAME" >&2; usage; }
[ -f "$config" ] || { echo "cluster file not found: $config" >&2; exit 2; }

case $board in
  qemu-virt) target=riscv32imac-unknown-none-elf; bin=dqe-qemu-virt ;;
  nucleo-h743zi) target=thumbv7em-none-eabihf; bin=dqe-nucleo-h743zi ;;
  *) echo "unknown board: $board (expected qemu-virt or nucleo-h743zi)" >&2; exit 2 ;;
esac

here=$(cd "$(dirname "$0")" && pwd)
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
target_dir=${DQE_BOARD_TARGET_DIR:-$here/target}
# Each node's image is copied out of cargo's directory, so images for several nodes coexist.
images=$target_dir/images

if [ "${DQE_BOARD_TOOLCHAIN:-debian}" = rustup ]; then
  cargo_cmd=(cargo build)
else
  if [ ! -x /usr/bin/cargo ] || [ ! -d /usr/lib/rustlib/src/rust/library/core ]; then
    echo "Debian's rustc with the library source is missing:" >&2
    echo "  apt-get install -y rustc-web cargo-web rust-web-src lld-22" >&2
    echo "or use rustup: rustup target add $target && DQE_BOARD_TOOLCHAIN=rustup $0 ..." >&2
    exit 1
  fi
  export PATH=/usr/bin:$PATH RUSTC_BOOTSTRAP=1
  # The targets link with `rust-lld`. Debian's rustc-web shipped /usr/bin/rust-lld (pointing at
  # lld-22) until 1.96.0+dfsg1-1~deb12u2, which moved it to rust-web-llvm (and all of llvm-22);
  # without it, name lld-22's ld.lld directly (same linker, same flavour).
  if ! command -v rust-lld >/dev/null 2>&1; then
    lld=$(command -v ld.lld-22 || command -v ld.lld || true)
    if [ -z "$lld" ]; then
      echo "no lld to link $target with: apt-get install -y lld-22" >&2
      exit 1
    fi
    export CARGO_TARGET_RISCV32IMAC_UNKNOWN_NONE_ELF_LINKER=$lld
    export CARGO_TARGET_THUMBV7EM_NONE_EABIHF_LINKER=$lld
  fi
  cargo_cmd=(cargo build -Zbuild-std=core)
fi

cd "$here"
DQE_CLUSTER_CONFIG=$config DQE_NODE=$node "${cargo_cmd[@]}" --release --locked \
  --target "$target" --target-dir "$target_dir" -p "dqe-board-$board" >&2
mkdir -p "$images"
cp "$target_dir/$target/release/$bin" "$images/$board-$node.elf"
echo "$images/$board-$node.elf"
