#!/usr/bin/env python3
"""Black-box conformance checker for DQE protocol v1.

Written by a reviewer from the shared contract (PROTOCOL.md) alone, without reading the Rust
sources: postcard, the ring, the cluster tag and every wire rule are re-derived here by hand, so
that a pass means a third-party client would interoperate. Python standard library only.

Usage: check.py dev PORTBASE NAME [TAG_HEX]   (a one-node `dqe-enforcer --dev`, r = 1)
       check.py cluster CONFIG.toml [TAG_HEX]  (a loopback cluster from `dqe config gen`)
Exit status 1 when any check fails. `run.sh` beside it starts the nodes and runs both."""
import socket, hashlib, struct, random, sys, time, os, re, ipaddress

RESULTS = []
TIMEOUT = 0.6

def sha1(b): return hashlib.sha1(b).digest()
def u32be(n): return struct.pack(">I", n)

# ---------- postcard by hand ----------
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F; n >>= 7
        if n: out.append(b | 0x80)
        else: out.append(b); return bytes(out)

def read_varint(buf, i, maxbytes):
    n = 0; shift = 0
    for c in range(maxbytes):
        if i >= len(buf): raise ValueError("short varint")
        b = buf[i]; i += 1
        n |= (b & 0x7F) << shift; shift += 7
        if not b & 0x80: return n, i
    raise ValueError("varint too long")

BODY = {0: "Test", 1: "Set", 2: "Get", 3: "Put", 4: "Found", 5: "NotFound", 6: "Stored", 7: "Refused"}
REASON = {0: "BadHash", 1: "Busy", 2: "Full", 3: "WrongCluster", 4: "Unavailable", 5: "WrongPort"}

def env(cluster, id_, body, version=1):
    return bytes([version]) + varint(cluster) + varint(id_) + body

def b_test(k): return varint(0) + k
def b_set(k, v): return varint(1) + k + v
def b_get(k): return varint(2) + k
def b_put(k, v): return varint(3) + k + v
def b_found(v): return varint(4) + v
def b_notfound(): return varint(5)
def b_stored(): return varint(6)
def b_refused(r): return varint(7) + varint(r)

def decode(buf):
    i = 0
    if len(buf) < 1: raise ValueError("empty")
    ver = buf[0]; i = 1
    if ver != 1: raise ValueError("version")
    cluster, i = read_varint(buf, i, 5)
    if cluster >= 1 << 32: raise ValueError("cluster overflow")
    id_, i = read_varint(buf, i, 10)
    if id_ >= 1 << 64: raise ValueError("id overflow")
    tag, i = read_varint(buf, i, 5)
    need = {0: 20, 1: 40, 2: 20, 3: 40, 4: 20, 5: 0, 6: 0}
    if tag in need:
        f = buf[i:i + need[tag]]
        if len(f) != need[tag]: raise ValueError("short body")
        i += need[tag]
        body = (BODY[tag], f)
    elif tag == 7:
        r, i = read_varint(buf, i, 5)
        if r not in REASON: raise ValueError("unknown reason")
        body = ("Refused", REASON[r])
    else:
        raise ValueError("unknown variant")
    if i != len(buf): raise ValueError("trailing")
    return ver, cluster, id_, body

# ---------- transport ----------
def newsock():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0)); s.settimeout(TIMEOUT)
    return s

def xchg(port, data, sock=None, timeout=TIMEOUT, collect=False):
    """send data to 127.0.0.1:port, return first reply (bytes) or None; collect=True -> list of all replies within timeout"""
    own = sock is None
    s = sock or newsock()
    s.sendto(data, ("127.0.0.1", port))
    replies = []
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            s.settimeout(max(0.01, deadline - time.time()))
            try:
                r, addr = s.recvfrom(2048)
            except socket.timeout:
                break
            if addr != ("127.0.0.1", port):
                replies.append(("WRONG-SRC %s" % (addr,), r)); continue
            replies.append(r)
            if not collect: break
    finally:
        if own: s.close()
    if collect: return replies
    return replies[0] if replies else None

def rid(): return random.getrandbits(64)

def hx(b): return b.hex() if isinstance(b, (bytes, bytearray)) else repr(b)

def record(name, ok, sent=None, got=None, rule="", note=""):
    RESULTS.append((name, ok, sent, got, rule, note))
    line = "%s  %s" % ("PASS" if ok else "FAIL", name)
    if note: line += "  [" + note + "]"
    if not ok:
        line += "\n      sent=%s\n      got=%s\n      rule: %s" % (hx(sent), hx(got) if got is not None else "(no reply)", rule)
    print(line, flush=True)

def expect_reply(name, port, data, exp_body, exp_cluster=None, exp_id=None, rule="", sock=None):
    """send request, decode reply; check echo, length, exact body."""
    _, c, i, _ = decode(data)
    r = xchg(port, data, sock=sock)
    if r is None:
        record(name, False, data, None, rule or "a request is answered"); return None
    if isinstance(r, tuple):
        record(name, False, data, r[1], "Rule 2: reply goes back from/to the request's address", note=r[0]); return None
    try:
        d = decode(r)
    except ValueError as e:
        record(name, False, data, r, "Datagram: reply must be postcard(Envelope)", note="undecodable: %s" % e); return None
    expected = env(c, i, exp_body_bytes(exp_body))
    ok = (r == expected)
    record(name, ok, data, r, rule + (" | Rule 2 echo/no-amplification" if ok is False else ""),
           note="" if ok else "expected %s" % expected.hex())
    return r

def exp_body_bytes(b):
    kind = b[0]
    if kind == "Found": return b_found(b[1])
    if kind == "NotFound": return b_notfound()
    if kind == "Stored": return b_stored()
    if kind == "Refused": return b_refused({v: k for k, v in REASON.items()}[b[1]])
    raise ValueError(kind)

def expect_silence(name, port, data, rule="Rule 1: nothing that failed to decode is ever answered"):
    r = xchg(port, data, timeout=0.4)
    record(name, r is None, data, r[1] if isinstance(r, tuple) else r, rule)

def word_pair(tag=""):
    w = ("conf-%s-%016x" % (tag, random.getrandbits(64))).encode()
    v = sha1(w); return sha1(v), v

# ---------- assignment ----------
def canonical_addr(text):
    """An address's canonical text (Cluster tag, changed 2026-12-01): a.b.c.d:port, or
    [v6]:port in RFC 5952 form. Python 3.11's ipaddress compresses like RFC 5952 section 4
    but prints an IPv4-mapped address in hex, so that one (section 5) is written out here."""
    host, port = text.rsplit(":", 1)
    a = ipaddress.ip_address(host.strip("[]"))
    if a.version == 4:
        return "%s:%d" % (a, int(port))
    m = a.ipv4_mapped
    return "[%s]:%d" % ("::ffff:%s" % m if m else str(a), int(port))

def cluster_tag(r, vnodes, handoff, nodes):
    """dqe-cluster-v2: nodes is a list of (name, portal, storer, source) address texts."""
    b = b"dqe-cluster-v2" + u32be(r) + u32be(vnodes) + u32be(handoff)
    for name, *addrs in nodes:
        b += name.encode() + b"\x00" + b"".join(canonical_addr(a).encode() + b"\x00" for a in addrs)
    t = struct.unpack(">I", sha1(b)[:4])[0]
    return t or 1

def ring(names, vnodes):
    pts = []
    for idx, n in enumerate(names):
        for j in range(vnodes):
            pts.append((sha1(b"dqe-ring-v1" + n.encode() + u32be(j)), idx))
    pts.sort()  # bytes compare = big-endian numeric; ties -> lower node index
    return pts

def pref_list(pts, k):
    start = 0
    while start < len(pts) and pts[start][0] < k: start += 1
    out = []
    for m in range(len(pts)):
        o = pts[(start + m) % len(pts)][1]
        if o not in out: out.append(o)
    return out

# ---------- single-node checks ----------
def node_checks(label, portal, storer, source, tag):
    P, S = portal, storer
    k, v = word_pair(label)
    # strict decoding: to both portal and storer
    good_test = env(0, rid(), b_test(k))
    good_get = env(0, rid(), b_get(k))
    for pname, port, good, gbody in (("portal", P, good_test, b_test(k)), ("storer", S, good_get, b_get(k))):
        i = rid()
        cases = [
            ("version 0", env(0, i, gbody, version=0)),
            ("version 2", env(0, i, gbody, version=2)),
            ("version 255", env(0, i, gbody, version=255)),
            ("unknown variant 8", env(0, i, varint(8) + k)),
            ("unknown variant 300 (2-byte varint)", env(0, i, varint(300) + k)),
            ("short: key 19 bytes", env(0, i, gbody)[:-1]),
            ("short: only version", b"\x01"),
            ("short: body tag missing", bytes([1]) + varint(0) + varint(i)),
            ("empty datagram", b""),
            ("short: id varint truncated", bytes([1, 0, 0x80])),
            ("trailing byte", env(0, i, gbody) + b"\x00"),
            ("trailing 20 bytes", env(0, i, gbody) + k),
            ("cluster varint > u32 (6 bytes)", bytes([1]) + b"\xff\xff\xff\xff\xff\x01" + varint(i) + gbody),
            ("cluster varint 5th byte > 0x0f (>u32)", bytes([1]) + b"\xff\xff\xff\xff\x1f" + varint(i) + gbody),
            ("id varint 11 bytes", bytes([1, 0]) + b"\xff" * 10 + b"\x01" + gbody),
            ("Refused with unknown reason 6", env(0, i, varint(7) + varint(6))),
            ("Refused with unknown reason 200", env(0, i, varint(7) + varint(200))),
            ("Refused with reason missing", env(0, i, varint(7))),
            ("Set short value (39 bytes)", env(0, i, b_set(k, v))[:-1] if pname == "portal" else env(0, i, b_put(k, v))[:-1]),
        ]
        for nm, d in cases:
            expect_silence("[%s] strict decode %s: %s -> no reply" % (label, pname, nm), port, d)

    # cluster 0 accepted, reply echoes cluster and id (use 10-byte id)
    i = (1 << 64) - 1 - random.getrandbits(8)
    expect_reply("[%s] portal Test cluster=0, id=2^64-x -> NotFound echoing cluster/id" % label, P,
                 env(0, i, b_test(k)), ("NotFound",), rule="Semantics: Test -> NotFound; Rule 2")
    # correct tag
    calc = tag
    expect_reply("[%s] portal Test with computed cluster tag 0x%08x accepted" % (label, calc), P,
                 env(calc, rid(), b_test(k)), ("NotFound",), rule="Rule 4 / Cluster tag")
    expect_reply("[%s] storer Get with computed cluster tag accepted" % label, S,
                 env(calc, rid(), b_get(k)), ("NotFound",), rule="Rule 4 / Cluster tag")
    # wrong cluster
    for wc in ((calc ^ 1) or 2, 0xFFFFFFFF, 1 if calc != 1 else 2):
        expect_reply("[%s] portal Test cluster=0x%08x -> Refused(WrongCluster)" % (label, wc), P,
                     env(wc, rid(), b_test(k)), ("Refused", "WrongCluster"), rule="Rule 4")
        expect_reply("[%s] storer Get cluster=0x%08x -> Refused(WrongCluster)" % (label, wc), S,
                     env(wc, rid(), b_get(k)), ("Refused", "WrongCluster"), rule="Rule 4")
    expect_reply("[%s] portal Set (bad hash) wrong cluster -> Refused(WrongCluster)" % label, P,
                 env(calc ^ 0x80000000, rid(), b_set(k, sha1(v))), ("Refused", "WrongCluster"), rule="Rule 4")
    # wrong port
    expect_reply("[%s] Get on portal port -> Refused(WrongPort)" % label, P, env(0, rid(), b_get(k)), ("Refused", "WrongPort"), rule="Rule 3")
    expect_reply("[%s] Put on portal port -> Refused(WrongPort)" % label, P, env(0, rid(), b_put(k, v)), ("Refused", "WrongPort"), rule="Rule 3")
    expect_reply("[%s] Test on storer port -> Refused(WrongPort)" % label, S, env(0, rid(), b_test(k)), ("Refused", "WrongPort"), rule="Rule 3")
    expect_reply("[%s] Set on storer port -> Refused(WrongPort)" % label, S, env(0, rid(), b_set(k, v)), ("Refused", "WrongPort"), rule="Rule 3")
    # BadHash
    bad = sha1(b"not-" + v)
    expect_reply("[%s] portal Set SHA1(v)!=k -> Refused(BadHash)" % label, P, env(0, rid(), b_set(k, bad)), ("Refused", "BadHash"), rule="Keys and values / Set semantics")
    expect_reply("[%s] portal Set v=k (SHA1(v)!=k) -> Refused(BadHash)" % label, P, env(0, rid(), b_set(k, k)), ("Refused", "BadHash"), rule="Set semantics")
    expect_reply("[%s] storer Put SHA1(v)!=k -> Refused(BadHash)" % label, S, env(0, rid(), b_put(k, bad)), ("Refused", "BadHash"), rule="Put semantics")
    expect_reply("[%s] after BadHash, Test still NotFound" % label, P, env(0, rid(), b_test(k)), ("NotFound",), rule="Keys and values")

    # word mode Test/Set
    sk = newsock()
    sid = rid()
    setmsg = env(0, sid, b_set(k, v))
    expect_reply("[%s] word mode Set fresh -> Stored" % label, P, setmsg, ("Stored",), rule="Set semantics", sock=sk)
    expect_reply("[%s] Set retry same id same source -> Stored again" % label, P, setmsg, ("Stored",), rule="Rule 6", sock=sk)
    sk.close()
    expect_reply("[%s] Test after Set -> Found(v) (exact bytes)" % label, P, env(0, rid(), b_test(k)), ("Found", v), rule="Test semantics")
    expect_reply("[%s] Set again new id -> Found(v)" % label, P, env(0, rid(), b_set(k, v)), ("Found", v), rule="Set semantics: reused")
    expect_reply("[%s] same id, different source -> new request -> Found(v)" % label, P, setmsg, ("Found", v), rule="Rule 6: memory keyed by (source address, id)")
    expect_reply("[%s] Test with tag after Set -> Found(v), tag echoed" % label, P, env(calc, rid(), b_test(k)), ("Found", v), rule="Rule 2")

    # in-flight duplicate: two copies back to back, all replies must be Stored
    k2, v2 = word_pair(label + "dup")
    sk = newsock(); d = env(0, rid(), b_set(k2, v2))
    sk.sendto(d, ("127.0.0.1", P)); sk.sendto(d, ("127.0.0.1", P))
    reps = []
    end = time.time() + 0.8
    while time.time() < end:
        sk.settimeout(max(0.01, end - time.time()))
        try: reps.append(sk.recvfrom(2048)[0])
        except socket.timeout: break
    sk.close()
    exp = env(0, decode(d)[2], b_stored())
    ok = len(reps) >= 1 and all(r == exp for r in reps)
    record("[%s] Set sent twice back-to-back -> only Stored replies (%d replies)" % (label, len(reps)), ok, d,
           b"|".join(reps) if reps else None, "Rule 6: a repeat in flight is absorbed, retry must see Stored never Found")

    # storer Get/Put
    k3, v3 = word_pair(label + "st")
    expect_reply("[%s] storer Get absent -> NotFound" % label, S, env(0, rid(), b_get(k3)), ("NotFound",), rule="Get semantics")
    sk = newsock(); pid = rid(); putmsg = env(0, pid, b_put(k3, v3))
    expect_reply("[%s] storer Put fresh -> Stored" % label, S, putmsg, ("Stored",), rule="Put semantics", sock=sk)
    expect_reply("[%s] storer Put repeat (same id, same source) -> same reply Stored" % label, S, putmsg, ("Stored",), rule="Rule 6", sock=sk)
    pid2 = rid(); put2 = env(0, pid2, b_put(k3, v3))
    expect_reply("[%s] storer Put again new id -> Found(v)" % label, S, put2, ("Found", v3), rule="Put semantics: test-and-set", sock=sk)
    expect_reply("[%s] storer Put repeat of the Found one -> same Found(v)" % label, S, put2, ("Found", v3), rule="Rule 6", sock=sk)
    sk.close()
    expect_reply("[%s] storer Get present -> Found(v)" % label, S, env(0, rid(), b_get(k3)), ("Found", v3), rule="Get semantics")
    expect_reply("[%s] portal Test of key Put at storer -> Found(v)" % label, P, env(0, rid(), b_test(k3)), ("Found", v3), rule="Test semantics")
    # storer Put with wrong value but right hash impossible; Put of word-mode pair set via portal -> Found
    expect_reply("[%s] storer Get of key Set through portal -> Found(v)" % label, S, env(0, rid(), b_get(k)), ("Found", v), rule="Set semantics (r=1 write set = this node)") if label == "dev" else None

    # minimal-size request: reply not longer
    k4, v4 = word_pair(label + "min")
    d = env(0, 0, b_test(k4))
    r = xchg(P, d)
    record("[%s] minimal Test (id=0, cluster=0, %dB) -> reply <= request" % (label, len(d)),
           r is not None and not isinstance(r, tuple) and len(r) <= len(d), d, r, "Rule 2: never longer than the request")

    # unsolicited replies to every port -> no reply
    for pname, port in (("portal", P), ("storer", S), ("source", source)):
        for nm, body in (("Found", b_found(v)), ("NotFound", b_notfound()), ("Stored", b_stored()),
                         ("Refused(BadHash)", b_refused(0)), ("Refused(Busy)", b_refused(1)), ("Refused(Full)", b_refused(2)),
                         ("Refused(WrongCluster)", b_refused(3)), ("Refused(Unavailable)", b_refused(4)), ("Refused(WrongPort)", b_refused(5))):
            expect_silence("[%s] unsolicited %s to %s port -> no reply" % (label, nm, pname), port, env(0, rid(), body),
                           rule="Rule 3: a reply that matches no outstanding request is dropped")
    return k, v

# ---------- main ----------
def main():
    random.seed(int.from_bytes(os.urandom(8), "big"))
    mode = sys.argv[1]
    if mode == "dev":
        base = int(sys.argv[2]); name = sys.argv[3]
        dev = [(name,) + tuple("127.0.0.1:%d" % (base + i) for i in range(3))]
        tag = cluster_tag(1, 16, 0, dev)  # handoff: the default min(2, 1 - 1)
        print("computed dev cluster tag 0x%08x" % tag)
        if len(sys.argv) > 4:
            record("[dev] computed tag equals node's logged tag %s" % sys.argv[4], tag == int(sys.argv[4], 16), rule="Cluster tag")
        node_checks("dev", base, base + 1, base + 2, tag)
    else:
        txt = open(sys.argv[2]).read()
        r = int(re.search(r"^replication\s*=\s*(\d+)", txt, re.M).group(1))
        vm = re.search(r"^vnodes\s*=\s*(\d+)", txt, re.M); vnodes = int(vm.group(1)) if vm else 16
        names = re.findall(r'^name\s*=\s*"([^"]+)"', txt, re.M)
        hm = re.search(r"^handoff\s*=\s*(\d+)", txt, re.M)
        handoff = int(hm.group(1)) if hm else min(2, len(names) - r)
        addrs = {role: re.findall(r'^%s\s*=\s*"([^"]+)"' % role, txt, re.M) for role in ("portal", "storer", "source")}
        portals = [int(p) for p in re.findall(r'^portal\s*=\s*"127\.0\.0\.1:(\d+)"', txt, re.M)]
        storers = [int(p) for p in re.findall(r'^storer\s*=\s*"127\.0\.0\.1:(\d+)"', txt, re.M)]
        sources = [int(p) for p in re.findall(r'^source\s*=\s*"127\.0\.0\.1:(\d+)"', txt, re.M)]
        nodes = list(zip(names, addrs["portal"], addrs["storer"], addrs["source"]))
        tag = cluster_tag(r, vnodes, handoff, nodes)
        print("computed cluster tag 0x%08x r=%d vnodes=%d handoff=%d names=%s" % (tag, r, vnodes, handoff, names))
        if len(sys.argv) > 3:
            record("[c3] computed tag equals `dqe config gen` tag %s" % sys.argv[3], tag == int(sys.argv[3], 16), rule="Cluster tag")
        node_checks("c3-%s" % names[0], portals[0], storers[0], sources[0], tag)
        for n in range(1, len(names)):
            k, v = word_pair("tag")
            expect_reply("[c3] %s portal accepts computed tag" % names[n], portals[n], env(tag, rid(), b_test(k)), ("NotFound",), rule="Cluster tag / Rule 4")
            expect_reply("[c3] %s storer accepts computed tag" % names[n], storers[n], env(tag, rid(), b_get(k)), ("NotFound",), rule="Cluster tag / Rule 4")
            expect_reply("[c3] %s portal wrong tag -> WrongCluster" % names[n], portals[n], env(tag ^ 4, rid(), b_test(k)), ("Refused", "WrongCluster"), rule="Rule 4")
        pts = ring(names, vnodes)
        # Set through each portal, Found through every portal, placement per preference list
        place_ok = 0; place_total = 0
        for trial in range(12):
            via = trial % len(names)
            k, v = word_pair("c%d" % trial)
            pl = pref_list(pts, k)
            expect_reply("[c3] Set via %s -> Stored (pref=%s)" % (names[via], [names[x] for x in pl]), portals[via],
                         env(tag, rid(), b_set(k, v)), ("Stored",), rule="Set semantics")
            for j in range(len(names)):
                expect_reply("[c3]   Test via %s -> Found(v)" % names[j], portals[j], env(0, rid(), b_test(k)), ("Found", v), rule="Test semantics: pair Set anywhere is Found everywhere")
            for pos, nidx in enumerate(pl):
                want = ("Found", v) if pos < r else ("NotFound",)
                expect_reply("[c3]   Get at storer of %s (pref pos %d) -> %s" % (names[nidx], pos, want[0]), storers[nidx],
                             env(tag, rid(), b_get(k)), want,
                             rule="Assignment: first r nodes of preference list hold the copy; Set PUTs only to the write set")
        # handoff read: a copy only at the (r+1)-th node is found by Test and Set
        for trial in range(3):
            k, v = word_pair("ho%d" % trial)
            pl = pref_list(pts, k)
            if len(pl) <= r: break
            h = pl[r]
            expect_reply("[c3] Put directly at handoff node %s -> Stored" % names[h], storers[h], env(tag, rid(), b_put(k, v)), ("Stored",), rule="Put semantics")
            expect_reply("[c3] Test via %s finds copy held only at handoff node" % names[trial % 3], portals[trial % 3], env(0, rid(), b_test(k)), ("Found", v), rule="read set = write set + first r+handoff")
            time.sleep(0.3)
            for pos in range(r):
                expect_reply("[c3]   read repair: write-set node %s now has it" % names[pl[pos]], storers[pl[pos]], env(tag, rid(), b_get(k)), ("Found", v), rule="Read repair")
        # Set finds a copy held only by the first assigned node -> Found, and repairs the second
        k, v = word_pair("rr")
        pl = pref_list(pts, k)
        expect_reply("[c3] Put directly at %s (pref 0) -> Stored" % names[pl[0]], storers[pl[0]], env(tag, rid(), b_put(k, v)), ("Stored",), rule="Put semantics")
        expect_reply("[c3] Set via portal of %s -> Found(v) (already at pref 0)" % names[pl[-1]], portals[pl[-1]], env(0, rid(), b_set(k, v)), ("Found", v), rule="Set semantics")
        time.sleep(0.3)
        expect_reply("[c3]   read repair after Set: %s has it" % names[pl[1]], storers[pl[1]], env(tag, rid(), b_get(k)), ("Found", v), rule="Read repair")
        # dev tag not accepted here
    fails = [x for x in RESULTS if not x[1]]
    print("\nconformance: %d passed, %d failed" % (len(RESULTS) - len(fails), len(fails)))
    sys.exit(1 if fails else 0)

if __name__ == "__main__":
    main()
