#!/usr/bin/env bash
# Write the seed corpus of the parser targets (fuzz/corpus/<target>/seed-*) from valid
# encodings: every datagram kind, a stamp and a certificate made by `dqe`, the example
# cluster file and the client file of host-tools/README.md, segment files. The structured
# targets (node_handle, segment_replay) start from what `run.sh` found and minimised.
# Needs `cargo build -p host-tools` (target/debug/dqe) and python3. Run from anywhere.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
corpus=$root/fuzz/corpus
dqe=${DQE:-$root/target/debug/dqe}
mkdir -p "$corpus"/{wire_decode,stamp_parse,config_parse}

python3 - "$corpus/wire_decode" <<'PY'
import sys, hashlib
out = sys.argv[1]
def varint(n):
    b = bytearray()
    while True:
        if n < 0x80:
            b.append(n); return bytes(b)
        b.append(n & 0x7f | 0x80); n >>= 7
v = hashlib.sha1(b"seed").digest(); k = hashlib.sha1(v).digest()
bodies = {"test": b"\0" + k, "set": b"\1" + k + v, "get": b"\2" + k, "put": b"\3" + k + v,
          "found": b"\4" + v, "notfound": b"\5", "stored": b"\6"}
bodies.update({f"refused{r}": b"\7" + bytes([r]) for r in range(6)})
for name, body in bodies.items():
    for cluster, id_ in [(0, 1), (0x1234abcd, 2**64 - 1)]:
        with open(f"{out}/seed-{name}-{cluster:x}", "wb") as f:
            f.write(b"\1" + varint(cluster) + varint(id_) + body)
PY

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$dqe" keygen --out "$tmp/qa" >/dev/null
"$dqe" keygen --out "$tmp/s" >/dev/null
"$dqe" qa issue --qa-key "$tmp/qa.key" --sender "$tmp/s.pub" --quota 10 --expires 40000 \
  --out "$tmp/s.cert" >/dev/null 2>&1
stamp=$("$dqe" stamp print --cert "$tmp/s.cert" --key "$tmp/s.key" --index 3 --epoch 30000 2>/dev/null)
printf '%s' "$stamp" >"$corpus/stamp_parse/seed-stamp-text"
printf '%s\n' "$stamp" | python3 -c 'import sys,base64; t=sys.stdin.read().strip(); sys.stdout.buffer.write(base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)))' \
  >"$corpus/stamp_parse/seed-stamp-bin"
cp "$tmp/s.cert" "$corpus/stamp_parse/seed-cert-text"
sed 's/^dqe-certificate://' "$tmp/s.cert" | python3 -c 'import sys,base64; t=sys.stdin.read().strip(); sys.stdout.buffer.write(base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)))' \
  >"$corpus/stamp_parse/seed-cert-bin"
cp "$tmp/qa.pub" "$corpus/stamp_parse/seed-public-key"

cp "$root/firmware/cluster.example.toml" "$corpus/config_parse/seed-cluster-example"
cat >"$corpus/config_parse/seed-client" <<'TOML'
portals = ["127.0.0.1:8101", "127.0.0.1:8104"]
trust = ["3jgF_6F11hXeB00AEnLxh5egzofngBi23vT-oZxrYGQ"]
epoch_seconds = 86400
grace = 1
timeout_ms = 2000
cluster_tag = "0x1234abcd"
TOML
cat >"$corpus/config_parse/seed-cluster-full" <<'TOML'
[cluster]
replication = 2
vnodes = 16
handoff = 1
epoch_seconds = 86400
grace = 1
retain_epochs = 3

[[nodes]]
name = "n1"
portal = "127.0.0.1:8101"
storer = "127.0.0.1:8102"
source = "127.0.0.1:8103"
metrics = "127.0.0.1:9101"

[[nodes]]
name = "n2"
portal = "[::1]:8104"
storer = "[::1]:8105"
source = "[::1]:8106"
TOML
echo "seeds written to $corpus"
