#!/usr/bin/env python3
"""Independent REALITY known-answer vectors (python `cryptography`), for reality/tests.rs.

Builds a TLS 1.3 ClientHello with fixed keys the way REALITY clients do (Xray-core
`reality.UClient`, sing-box `reality_client.go`): session id plaintext = version(3) | 0 |
unix time (u32 BE) | short id (8); auth key = HKDF-SHA256(X25519(client eph, server pub),
salt = random[:20], info "REALITY"); session id = AES-256-GCM(auth key, nonce random[20:],
plaintext[:16], aad = the hello with a zero session id). Also the temporary certificate's
signature: HMAC-SHA512(auth key, ed25519 public key).
"""
import hashlib, hmac, struct
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

server_priv = bytes(range(1, 33))
client_priv = bytes(range(101, 133))
random = bytes((7 * i + 3) & 0xFF for i in range(32))
short_id = bytes.fromhex("0123456789abcdef")
now = 1_700_000_000
sni = b"www.example.com"
ed_pub = bytes((5 * i + 11) & 0xFF for i in range(32))

raw = lambda k: k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
sk = X25519PrivateKey.from_private_bytes(server_priv)
ck = X25519PrivateKey.from_private_bytes(client_priv)
client_pub = raw(ck)

def ext(t, body):
    return struct.pack(">HH", t, len(body)) + body

sni_list = struct.pack(">BH", 0, len(sni)) + sni
exts = ext(0, struct.pack(">H", len(sni_list)) + sni_list)
exts += ext(43, bytes([4]) + bytes.fromhex("03040303"))
shares = struct.pack(">HH", 0x001d, 32) + client_pub
exts += ext(51, struct.pack(">H", len(shares)) + shares)
exts += ext(13, bytes.fromhex("0004080704030"[:12]))
suites = bytes.fromhex("130113021303")

def hello(sid):
    body = bytes.fromhex("0303") + random + bytes([32]) + sid
    body += struct.pack(">H", len(suites)) + suites + bytes([1, 0])
    body += struct.pack(">H", len(exts)) + exts
    return bytes([1]) + len(body).to_bytes(3, "big") + body

shared = ck.exchange(sk.public_key())
auth = HKDF(hashes.SHA256(), 32, random[:20], b"REALITY").derive(shared)
plain = bytes([1, 8, 1, 0]) + struct.pack(">I", now) + short_id
sid = AESGCM(auth).encrypt(random[20:], plain, hello(bytes(32)))
msg = hello(sid)
assert msg[39:71] == sid
print("SERVER_PRIV", server_priv.hex())
print("HELLO", msg.hex())
print("AUTH_KEY", auth.hex())
print("CERT_SIG", hmac.new(auth, ed_pub, hashlib.sha512).hexdigest())
print("ED_PUB", ed_pub.hex())
