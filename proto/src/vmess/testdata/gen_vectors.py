#!/usr/bin/env python3
"""Independent VMess AEAD known-answer vectors (hashlib + `cryptography`), written from the
protocol description (nested-HMAC KDF, AES auth id, AES-128-GCM header, SHAKE128 chunk masks).
Run: python3 gen_vectors.py > vectors.json"""
import hashlib, hmac, json, struct, zlib
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305


class Level:
    """A hash function object: level 0 = SHA-256, level i = HMAC(level i-1, key)."""
    block_size = 64
    digest_size = 32

    def __init__(self, keys):
        self.keys = keys

    def digest(self, msg):
        if not self.keys:
            return hashlib.sha256(msg).digest()
        lower = Level(self.keys[:-1])
        k = self.keys[-1]
        if len(k) > 64:
            k = lower.digest(k)
        k = k.ljust(64, b"\0")
        ipad = bytes(b ^ 0x36 for b in k)
        opad = bytes(b ^ 0x5C for b in k)
        return lower.digest(opad + lower.digest(ipad + msg))


def kdf(key, *path):
    return Level([b"VMess AEAD KDF"] + list(path)).digest(key)


# Cross-check level 1 against the standard library's HMAC.
assert kdf(b"abc") == hmac.new(b"VMess AEAD KDF", b"abc", hashlib.sha256).digest()

uuid = bytes.fromhex("b831381d63244d53ad4f8cda48b30811")
cmd_key = hashlib.md5(uuid + b"c48619fe-8f02-49e0-b9e9-edf763e17e21").digest()
time = 1_700_000_000
rnd = bytes.fromhex("01020304")
plain_id = struct.pack(">Q", time) + rnd
plain_id += struct.pack(">I", zlib.crc32(plain_id) & 0xFFFFFFFF)
aid_key = kdf(cmd_key, b"AES Auth ID Encryption")[:16]
enc = Cipher(algorithms.AES(aid_key), modes.ECB()).encryptor()
auth_id = enc.update(plain_id) + enc.finalize()

# Request header: iv, key, V, options, P|Sec, rsv, cmd, port, atyp, addr, padding, fnv.
iv = bytes(range(16))
key = bytes(range(16, 32))
V = 0x5A
opt = 0x01 | 0x04  # chunk stream + masking
padding = b"\xAA\xBB\xCC"
sec = 3
header = bytes([1]) + iv + key + bytes([V, opt, (len(padding) << 4) | sec, 0, 1])
header += struct.pack(">H", 443) + bytes([2, len(b"example.com")]) + b"example.com" + padding


def fnv1a32(b):
    h = 0x811C9DC5
    for x in b:
        h ^= x
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


header += struct.pack(">I", fnv1a32(header))
conn_nonce = bytes.fromhex("0807060504030201")
lk = kdf(cmd_key, b"VMess Header AEAD Key_Length", auth_id, conn_nonce)[:16]
ln = kdf(cmd_key, b"VMess Header AEAD Nonce_Length", auth_id, conn_nonce)[:12]
hk = kdf(cmd_key, b"VMess Header AEAD Key", auth_id, conn_nonce)[:16]
hn = kdf(cmd_key, b"VMess Header AEAD Nonce", auth_id, conn_nonce)[:12]
sealed = auth_id + AESGCM(lk).encrypt(ln, struct.pack(">H", len(header)), auth_id)
sealed += conn_nonce + AESGCM(hk).encrypt(hn, header, auth_id)

# Body: two request chunks (aes-128-gcm, masking) then the end chunk.
shake = hashlib.shake_128(iv).digest(64)


def chunk_nonce(iv, count):
    return struct.pack(">H", count) + iv[2:12]


body = b""
mask_at = 0
for count, payload in enumerate([b"hello", b"world!!", b""]):
    ct = AESGCM(key).encrypt(chunk_nonce(iv, count), payload, None)
    mask = struct.unpack(">H", shake[mask_at:mask_at + 2])[0]
    mask_at += 2
    body += struct.pack(">H", len(ct) ^ mask) + ct

# Response header for that request.
rkey = hashlib.sha256(key).digest()[:16]
riv = hashlib.sha256(iv).digest()[:16]
rl = AESGCM(kdf(rkey, b"AEAD Resp Header Len Key")[:16]).encrypt(
    kdf(riv, b"AEAD Resp Header Len IV")[:12], struct.pack(">H", 4), None)
rh = AESGCM(kdf(rkey, b"AEAD Resp Header Key")[:16]).encrypt(
    kdf(riv, b"AEAD Resp Header IV")[:12], bytes([V, 0, 0, 0]), None)

# Response body: chacha20-poly1305 with masking + global padding (padding drawn before the
# mask), and with authenticated length (aes-128-gcm, key KDF16(request key, "auth_len")).
def md5(b):
    return hashlib.md5(b).digest()


ckey = md5(rkey) + md5(md5(rkey))
rshake = hashlib.shake_128(riv).digest(64)
payload = b"response payload"
pad = struct.unpack(">H", rshake[0:2])[0] % 64
mask = struct.unpack(">H", rshake[2:4])[0]
ct = ChaCha20Poly1305(ckey).encrypt(chunk_nonce(riv, 0), payload, None)
resp_chunk_padded_prefix = struct.pack(">H", (len(ct) + pad) ^ mask) + ct  # padding bytes follow

alk = kdf(key, b"auth_len")[:16]
authlen_chunk = AESGCM(alk).encrypt(chunk_nonce(iv, 0), struct.pack(">H", len(payload)), None)
authlen_chunk += AESGCM(key).encrypt(chunk_nonce(iv, 0), payload, None)

# Response direction with authenticated length: the size is still sealed with the request key
# and request iv (own counter); the payload with the response key/iv.
authlen_response_chunk = AESGCM(alk).encrypt(chunk_nonce(iv, 0), struct.pack(">H", len(payload)), None)
authlen_response_chunk += AESGCM(rkey).encrypt(chunk_nonce(riv, 0), payload, None)

print(json.dumps({
    "kdf_root_abc": kdf(b"abc").hex(),
    "kdf_two_labels": kdf(b"key", b"label1", b"label2").hex(),
    "cmd_key": cmd_key.hex(),
    "uuid": uuid.hex(),
    "auth_id_key": aid_key.hex(),
    "time": time,
    "rand": rnd.hex(),
    "auth_id": auth_id.hex(),
    "header_plain": header.hex(),
    "conn_nonce": conn_nonce.hex(),
    "request_prefix": sealed.hex(),
    "request_body": body.hex(),
    "response_header": (rl + rh).hex(),
    "shake_iv_8": shake[:8].hex(),
    "chacha_response_padding": pad,
    "chacha_response_chunk_prefix": resp_chunk_padded_prefix.hex(),
    "authlen_request_chunk": authlen_chunk.hex(),
    "authlen_response_chunk": authlen_response_chunk.hex(),
}, indent=1))
