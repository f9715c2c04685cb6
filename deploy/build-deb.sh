#!/usr/bin/env bash
# Build the Debian package `dqe` (dqe, dqe-enforcer, their man pages and shell completions,
# the systemd units, the Prometheus rules and the Grafana dashboard) and print its path.
# Needs cargo-deb: cargo install cargo-deb --locked.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p host-tools -p backend-std --bins >&2
rm -rf target/dqe-assets target/debian/dqe_*.deb target/debian/dqe-dbgsym_*.ddeb
cargo run --locked -q -p xtask -- assets target/dqe-assets >&2
# --dbgsym: the debug info (profile.release has debug = 1) goes to dqe-dbgsym_*.ddeb, beside.
# (A failure shows on stderr and leaves no .deb for the ls below.)
# The generated man pages and completions are not Cargo outputs, which cargo deb warns about.
cargo deb --locked -p host-tools --no-build --dbgsym 2>&1 >/dev/null |
  grep -v 'does not match the pattern, and will not be built' | sed 's/^/cargo deb: /' >&2 || true
ls -t target/debian/dqe_*.deb | head -n 1
