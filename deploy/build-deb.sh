#!/usr/bin/env bash
# Build the Debian package `dqe` (dqe, dqe-enforcer, their man pages and shell completions,
# the systemd units, the Prometheus rules and the Grafana dashboard) and print its path.
# Needs cargo-deb: cargo install cargo-deb --locked.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p host-tools -p backend-std --bins >&2
rm -rf target/dqe-assets
cargo run --locked -q -p xtask -- assets target/dqe-assets >&2
cargo deb --locked -p host-tools --no-build 2>&1 >/dev/null | sed 's/^/cargo deb: /' >&2
ls -t target/debian/dqe_*.deb | head -n 1
