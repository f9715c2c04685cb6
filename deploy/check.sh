#!/usr/bin/env bash
# Check deploy/: the systemd units (systemd-analyze verify, with the binaries stood in by
# /bin/true when they are not installed), the Prometheus rules (promtool check rules and the
# rules' unit tests) and the dashboard's JSON. Needs systemd and Debian's `prometheus`.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for unit in systemd/dqe-enforcer@.service systemd/dqe-milter.service; do
  name=$(basename "$unit")
  # A template is verified as an instance.
  [[ $name == *@.service ]] && name=${name/@./@n1.}
  sed -E 's|^ExecStart=/usr/bin/[^ ]+|ExecStart=/bin/true|' "$unit" > "$tmp/$name"
  timeout 60 systemd-analyze verify --man=no "$tmp/$name"
  echo "$unit: systemd-analyze verify OK"
done
timeout 60 promtool check rules prometheus/dqe.rules.yml
timeout 60 promtool test rules prometheus/dqe.rules.test.yml
python3 -m json.tool grafana/dqe.json >/dev/null
echo "grafana/dqe.json: valid JSON"
