#!/usr/bin/env bash
# CI: build the Debian package, install it with dpkg -i, run what it installed (dqe --help,
# the man pages, dqe-enforcer --dev answering a portal request, systemd-analyze verify on the
# installed units), then remove and purge it and check nothing of it is left. Needs root.
set -euo pipefail
cd "$(dirname "$0")/../.."
t=$SECONDS
deb=$(timeout 1800 deploy/build-deb.sh)
echo "built $deb in $((SECONDS - t)) s"
dpkg-deb --info "$deb" | grep -E '^ (Package|Version|Depends):'
dpkg-deb --contents "$deb" | awk '{print $6}' | grep -E 'bin/|systemd|man1/dqe(-enforcer|-status)?\.1|completions/dqe$' 

timeout 120 dpkg -i "$deb"
work=$(mktemp -d)
enforcer_pid=
cleanup() {
  [ -n "$enforcer_pid" ] && kill "$enforcer_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
getent passwd dqe >/dev/null || { echo "postinst made no dqe user"; exit 1; }
timeout 10 dqe --help >/dev/null
timeout 10 dqe-enforcer --version
timeout 10 man -P cat dqe-status >/dev/null 2>&1 || zcat -f /usr/share/man/man1/dqe-status.1* | grep -q 'dqe-status'
# The installed enforcer serves: a word set through its portal is then found.
dqe-enforcer --dev --port-base 47750 --data-dir "$work/data" 2>"$work/enforcer.log" &
enforcer_pid=$!
for _ in $(seq 50); do
  timeout 5 dqe portal --client-config /dev/null --portal 127.0.0.1:47750 --timeout-ms 200 set ci-word >/dev/null 2>&1 && break
  sleep 0.2
done
found=0
timeout 10 dqe portal --client-config /dev/null --portal 127.0.0.1:47750 test ci-word || found=$?
[ "$found" = 3 ] || { echo "the installed dqe-enforcer --dev did not keep the word"; cat "$work/enforcer.log"; exit 1; }
kill -TERM "$enforcer_pid"
timeout 10 tail --pid="$enforcer_pid" -f /dev/null
enforcer_pid=
# The installed units, as systemd reads them (the template as an instance).
timeout 60 systemd-analyze verify --man=no dqe-enforcer@n1.service dqe-milter.service

timeout 120 dpkg -r dqe
[ ! -e /usr/bin/dqe ] && [ ! -e /usr/bin/dqe-enforcer ] && [ ! -e /lib/systemd/system/dqe-milter.service ] ||
  { echo "dpkg -r left files behind"; exit 1; }
timeout 120 dpkg --purge dqe
! getent passwd dqe >/dev/null || { echo "dpkg --purge left the dqe user"; exit 1; }
! dpkg -s dqe >/dev/null 2>&1 || { echo "dqe still known to dpkg after --purge"; exit 1; }
echo "package install test passed"
