# Independent ECVRF-EDWARDS25519-SHA512-TAI (RFC 9381) written from the RFC 8032 reference
# arithmetic, used only to compute known answers outside the Rust code. `python3 ecvrf.py`
# checks it against RFC 9381 Appendix B.3 first.
import hashlib
p = 2**255 - 19
q = 2**252 + 27742317777372353535851937790883648493
d = -121665 * pow(121666, p - 2, p) % p
def sha512(b): return hashlib.sha512(b).digest()
def add(P, Q):
    A = (P[1]-P[0]) * (Q[1]-Q[0]) % p; B = (P[1]+P[0]) * (Q[1]+Q[0]) % p
    C = 2 * P[3] * Q[3] * d % p; D = 2 * P[2] * Q[2] % p
    E, F, G, H = B-A, D-C, D+C, B+A
    return (E*F % p, G*H % p, F*G % p, E*H % p)
def mul(s, P):
    Q = (0, 1, 1, 0)
    while s > 0:
        if s & 1: Q = add(Q, P)
        P = add(P, P); s >>= 1
    return Q
def equal(P, Q):
    return (P[0]*Q[2] - Q[0]*P[2]) % p == 0 and (P[1]*Q[2] - Q[1]*P[2]) % p == 0
modp_sqrt_m1 = pow(2, (p - 1) // 4, p)
def recover_x(y, sign):
    if y >= p: return None
    x2 = (y*y - 1) * pow(d*y*y + 1, p - 2, p)
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (p + 3) // 8, p)
    if (x*x - x2) % p != 0: x = x * modp_sqrt_m1 % p
    if (x*x - x2) % p != 0: return None
    if (x & 1) != sign: x = p - x
    return x
g_y = 4 * pow(5, p - 2, p) % p
g_x = recover_x(g_y, 0)
G = (g_x, g_y, 1, g_x * g_y % p)
def compress(P):
    zinv = pow(P[2], p - 2, p); x = P[0]*zinv % p; y = P[1]*zinv % p
    return int.to_bytes(y | ((x & 1) << 255), 32, "little")
def decompress(s):
    y = int.from_bytes(s, "little"); sign = y >> 255; y &= (1 << 255) - 1
    x = recover_x(y, sign)
    return None if x is None else (x, y, 1, x*y % p)
def expand(seed):
    h = sha512(seed); a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8; a |= (1 << 254)
    return a, h[32:]
SUITE = b"\x03"
def encode_to_curve(pk, alpha):
    for ctr in range(256):
        P = decompress(sha512(SUITE + b"\x01" + pk + alpha + bytes([ctr]) + b"\x00")[:32])
        if P is not None: return mul(8, P)
def challenge(pts):
    c = sha512(SUITE + b"\x02" + b"".join(compress(P) for P in pts) + b"\x00")[:16]
    return int.from_bytes(c, "little")
def prove(seed, alpha):
    x, prefix = expand(seed); Y = mul(x, G); pk = compress(Y)
    H = encode_to_curve(pk, alpha); hs = compress(H)
    Gamma = mul(x, H)
    k = int.from_bytes(sha512(prefix + hs), "little") % q
    c = challenge([Y, H, Gamma, mul(k, G), mul(k, H)])
    s = (k + c * x) % q
    return compress(Gamma) + int.to_bytes(c, 16, "little") + int.to_bytes(s, 32, "little")
def proof_to_hash(pi):
    return sha512(SUITE + b"\x03" + compress(mul(8, decompress(pi[:32]))) + b"\x00")
def public(seed):
    return compress(mul(expand(seed)[0], G))
if __name__ == "__main__":
    for sk, alpha, pi, beta in [
        ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60", "",
         "8657106690b5526245a92b003bb079ccd1a92130477671f6fc01ad16f26f723f26f8a57ccaed74ee1b190bed1f479d9727d2d0f9b005a6e456a35d4fb0daab1268a1b0db10836d9826a528ca76567805",
         "90cf1df3b703cce59e2a35b925d411164068269d7b2d29f3301c03dd757876ff66b71dda49d2de59d03450451af026798e8f81cd2e333de5cdf4f3e140fdd8ae"),
        ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb", "72",
         "f3141cd382dc42909d19ec5110469e4feae18300e94f304590abdced48aed5933bf0864a62558b3ed7f2fea45c92a465301b3bbf5e3e54ddf2d935be3b67926da3ef39226bbc355bdc9850112c8f4b02",
         "eb4440665d3891d668e7e0fcaf587f1b4bd7fbfe99d0eb2211ccec90496310eb5e33821bc613efb94db5e5b54c70a848a0bef4553a41befc57663b56373a5031"),
        ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7", "af82",
         "9bc0f79119cc5604bf02d23b4caede71393cedfbb191434dd016d30177ccbf8096bb474e53895c362d8628ee9f9ea3c0e52c7a5c691b6c18c9979866568add7a2d41b00b05081ed0f58ee5e31b3a970e",
         "645427e5d00c62a23fb703732fa5d892940935942101e456ecca7bb217c61c452118fec1219202a0edcf038bb6373241578be7217ba85a2687f7a0310b2df19f")]:
        got = prove(bytes.fromhex(sk), bytes.fromhex(alpha))
        assert got.hex() == pi, (got.hex(), pi)
        assert proof_to_hash(got).hex() == beta
    print("RFC 9381 B.3: 3 examples match")
