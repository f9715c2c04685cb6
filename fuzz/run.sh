#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 60) each, one after the other; fail on the first
# crash, panic, leak or slow input (libFuzzer writes it to fuzz/artifacts/<target>/ and prints
# how to reproduce it). Needs the nightly toolchain and cargo-fuzz (see docs/fuzzing.md).
# The random seed is fixed (FUZZ_SEED, default 20261202) so that a CI run explores the same
# inputs each time and a failure reproduces; FUZZ_SEED=0 lets libFuzzer pick one.
#
# The committed corpus (fuzz/corpus/<target>/) seeds each run; what a run finds goes to a
# scratch directory, so the committed corpus only changes on purpose (FUZZ_KEEP=1 writes new
# inputs into it; minimise it afterwards with `cargo +nightly fuzz cmin <target>`).
set -euo pipefail
secs=${1:-60}
cd "$(dirname "$0")"
targets=(wire_decode node_handle stamp_parse config_parse segment_replay)
started=$SECONDS
cargo +nightly fuzz build
echo "fuzz targets built in $((SECONDS - started)) s"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  if [ "${FUZZ_KEEP:-0}" = 1 ]; then
    dirs=("corpus/$t")
  else
    scratch=$(mktemp -d)
    dirs=("$scratch" "corpus/$t")
  fi
  t0=$SECONDS
  # -timeout: one input taking longer is a failure (a hang); -rss_limit_mb: so is a blow-up.
  if ! cargo +nightly fuzz run "$t" "${dirs[@]}" -- \
      -seed="${FUZZ_SEED:-20261202}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"/tmp/dqe-fuzz-$t.log" 2>&1; then
    tail -n 60 "/tmp/dqe-fuzz-$t.log"
    echo "fuzz target $t FAILED after $((SECONDS - t0)) s (log /tmp/dqe-fuzz-$t.log, input in fuzz/artifacts/$t/)"
    exit 1
  fi
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "/tmp/dqe-fuzz-$t.log" | grep -Eo '[0-9]+$' || echo '?')
  echo "fuzz target $t: $runs inputs in $((SECONDS - t0)) s, no crash"
  [ "${FUZZ_KEEP:-0}" = 1 ] || rm -rf "$scratch"
done
echo "fuzzing took $((SECONDS - started)) s"
