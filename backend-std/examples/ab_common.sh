# Sourced by the A/B scripts (ab_mix.sh, ab_together.sh) with their arguments: what they
# share, so that both read their options and report their ratios the same way.
#   $1: --fsync policy (interval), $2: loopback_bench --mode (mix); BEFORE (required) and
#   AFTER (target/release/dqe-enforcer): the binaries; DATA_PARENT (/work): where the
#   scratch directory $D goes (removed on exit). Runs from the workspace root.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
POLICY=${1:-interval}
MODE=${2:-mix}
A=${BEFORE:?BEFORE=path of the binary to compare with}
B=${AFTER:-target/release/dqe-enforcer}
D=$(mktemp -d -p "${DATA_PARENT:-/work}")
trap 'rm -rf "$D"' EXIT
ratios=""

# load [fields]: the load average (1-minute by default; "1-3" for all three).
load() { cut -d' ' -f"${1:-1}" /proc/loadavg; }

# ab_ratio BEFORE_RATE AFTER_RATE: sets $ratio to after/before with two decimals (0 when
# before is 0), and keeps it for ab_median.
ab_ratio() {
  ratio=$(awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (a > 0 ? b / a : 0)}')
  ratios="$ratios $ratio"
}

# ab_median: the median of the ratios so far.
ab_median() {
  echo "$ratios" | tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {printf "median after/before: %s\n", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'
}
