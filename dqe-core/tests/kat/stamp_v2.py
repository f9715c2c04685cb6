# Known answers of a version-2 stamp (dqe-core/tests/known_answers.rs), from PROTOCOL.md
# "Stamps (version 2)": Ed25519 by Python's `cryptography`, the ECVRF by ./ecvrf.py.
import hashlib, struct, sys
sys.path.insert(0, __import__("os").path.dirname(__file__))
from ecvrf import prove, proof_to_hash, public
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
H = lambda b: hashlib.sha1(b).digest()
qa_seed, snd_seed, salt = b"\x11"*32, b"\x22"*32, b"\x33"*16
quota, expires, epoch, index = 100, 20000, 19999, 7
raw = lambda k: k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
qa = Ed25519PrivateKey.from_private_bytes(qa_seed); snd = raw(Ed25519PrivateKey.from_private_bytes(snd_seed))
assert public(snd_seed) == snd
cm = b"dqe-cert-v2" + b"\x02" + snd + struct.pack(">I", quota) + struct.pack(">I", expires) + salt
cs = qa.sign(cm)
alpha = b"dqe-stamp-v2" + cs + struct.pack(">I", epoch) + struct.pack(">I", index)
pi = prove(snd_seed, alpha)
beta = proof_to_hash(pi)
v = H(b"dqe-postmark-v2" + beta); k = H(v)
print("qa", raw(qa).hex()); print("snd", snd.hex())
print("cert_sig", cs.hex()); print("proof", pi.hex()); print("beta", beta.hex())
print("v", v.hex()); print("k", k.hex())
