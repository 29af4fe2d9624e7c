//! VMess AEAD primitives: the nested-HMAC KDF, the auth id, the header AEADs and small hashes.
//!
//! ```text
//! cmdKey  = MD5(uuid bytes ‖ "c48619fe-8f02-49e0-b9e9-edf763e17e21")
//! KDF(key, p1, …, pn) = Hn(key) where
//!     H0 = SHA-256
//!     H1 = HMAC(H0, key = "VMess AEAD KDF")        (HMAC whose hash is the previous level)
//!     Hi = HMAC(H(i-1), key = p(i-1))
//! KDF16 = KDF[..16]
//!
//! auth id (16 B) = AES-128-ECB(KDF16(cmdKey, "AES Auth ID Encryption"),
//!                      unix time (8 BE) ‖ random (4) ‖ CRC32-IEEE(first 12) (4 BE))
//! chacha20-poly1305 body key (32 B) = MD5(k) ‖ MD5(MD5(k))
//! ```

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use md5::{Digest, Md5};
use sha2::Sha256;

use crate::WireError;

/// Appended to the uuid to form the command key.
pub const CMD_KEY_SALT: &[u8] = b"c48619fe-8f02-49e0-b9e9-edf763e17e21";
pub const KDF_ROOT: &[u8] = b"VMess AEAD KDF";
pub const AUTH_ID_KEY: &[u8] = b"AES Auth ID Encryption";
pub const RESP_HEADER_LEN_KEY: &[u8] = b"AEAD Resp Header Len Key";
pub const RESP_HEADER_LEN_IV: &[u8] = b"AEAD Resp Header Len IV";
pub const RESP_HEADER_KEY: &[u8] = b"AEAD Resp Header Key";
pub const RESP_HEADER_IV: &[u8] = b"AEAD Resp Header IV";
pub const HEADER_KEY: &[u8] = b"VMess Header AEAD Key";
pub const HEADER_IV: &[u8] = b"VMess Header AEAD Nonce";
pub const HEADER_LEN_KEY: &[u8] = b"VMess Header AEAD Key_Length";
pub const HEADER_LEN_IV: &[u8] = b"VMess Header AEAD Nonce_Length";
/// Label of the authenticated-length option's key.
pub const AUTH_LEN: &[u8] = b"auth_len";

/// AEAD tag length (both body ciphers and the header's AES-128-GCM).
pub const TAG_LEN: usize = 16;
/// Auth ids are accepted this many seconds either side of our clock.
pub const MAX_SKEW_S: u64 = 120;

const BLOCK: usize = 64;

/// SHA-256 states that have absorbed the root key's ipad and opad blocks (every KDF call
/// bottoms out in many level-1 HMACs keyed by the same root label; this halves their cost).
fn root_states() -> &'static (Sha256, Sha256) {
    static ROOT: std::sync::OnceLock<(Sha256, Sha256)> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let mut ipad = [0x36u8; BLOCK];
        let mut opad = [0x5cu8; BLOCK];
        for ((i, o), b) in ipad.iter_mut().zip(opad.iter_mut()).zip(KDF_ROOT.iter()) {
            *i ^= b;
            *o ^= b;
        }
        (Sha256::new_with_prefix(ipad), Sha256::new_with_prefix(opad))
    })
}

/// `Hn(msg)` for the hash level `keys.len()` (level 0 = SHA-256).
fn level_hash(keys: &[&[u8]], msg: &[&[u8]]) -> [u8; 32] {
    if keys == [KDF_ROOT] {
        let (i, o) = root_states();
        let mut inner = i.clone();
        for m in msg {
            inner.update(m);
        }
        let mut outer = o.clone();
        outer.update(inner.finalize());
        return outer.finalize().into();
    }
    let Some((key, lower)) = keys.split_last() else {
        let mut h = Sha256::new();
        for m in msg {
            h.update(m);
        }
        return h.finalize().into();
    };
    // HMAC with the lower level as its hash (block 64, output 32).
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        let d = level_hash(lower, &[key]);
        k[..32].copy_from_slice(&d);
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for ((i, o), b) in ipad.iter_mut().zip(opad.iter_mut()).zip(k.iter()) {
        *i ^= b;
        *o ^= b;
    }
    let mut inner_msg: Vec<&[u8]> = Vec::with_capacity(msg.len() + 1);
    inner_msg.push(&ipad);
    inner_msg.extend_from_slice(msg);
    let inner = level_hash(lower, &inner_msg);
    level_hash(lower, &[&opad, &inner])
}

/// The VMess AEAD KDF (32 bytes).
pub fn kdf(key: &[u8], path: &[&[u8]]) -> [u8; 32] {
    let mut keys: Vec<&[u8]> = Vec::with_capacity(path.len() + 1);
    keys.push(KDF_ROOT);
    keys.extend_from_slice(path);
    level_hash(&keys, &[key])
}

pub fn kdf16(key: &[u8], path: &[&[u8]]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o.copy_from_slice(&kdf(key, path)[..16]);
    o
}

pub fn kdf12(key: &[u8], path: &[&[u8]]) -> [u8; 12] {
    let mut o = [0u8; 12];
    o.copy_from_slice(&kdf(key, path)[..12]);
    o
}

/// MD5(uuid ‖ salt).
pub fn cmd_key(uuid: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(uuid);
    h.update(CMD_KEY_SALT);
    h.finalize().into()
}

/// The per-user block cipher that encrypts/decrypts auth ids.
pub fn auth_id_cipher(cmd_key: &[u8; 16]) -> Aes128 {
    Aes128::new(&kdf16(cmd_key, &[AUTH_ID_KEY]).into())
}

/// A client's auth id for `time` and 4 random bytes.
pub fn create_auth_id(cipher: &Aes128, time: u64, rand: [u8; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&time.to_be_bytes());
    b[8..12].copy_from_slice(&rand);
    let crc = crc32fast::hash(&b[..12]);
    b[12..].copy_from_slice(&crc.to_be_bytes());
    let mut block = b.into();
    cipher.encrypt_block(&mut block);
    block.into()
}

/// Decrypts `id` with `cipher`; `Some(timestamp)` when its CRC matches (the user is found).
pub fn open_auth_id(cipher: &Aes128, id: &[u8; 16]) -> Option<u64> {
    let mut block = (*id).into();
    cipher.decrypt_block(&mut block);
    let b: [u8; 16] = block.into();
    let (head, crc) = b.split_at(12);
    let crc = u32::from_be_bytes(crc.try_into().ok()?);
    if crc32fast::hash(head) != crc {
        return None;
    }
    let t = head.get(..8)?;
    Some(u64::from_be_bytes(t.try_into().ok()?))
}

/// FNV-1a 32 (the request header's checksum).
pub fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// MD5(k) ‖ MD5(MD5(k)).
pub fn chacha_key(k: &[u8]) -> [u8; 32] {
    let a: [u8; 16] = Md5::digest(k).into();
    let b: [u8; 16] = Md5::digest(a).into();
    let mut o = [0u8; 32];
    o[..16].copy_from_slice(&a);
    o[16..].copy_from_slice(&b);
    o
}

/// First 16 bytes of SHA-256 (the AEAD response body key and IV from the request's).
pub fn sha256_16(b: &[u8]) -> [u8; 16] {
    let d = Sha256::digest(b);
    let mut o = [0u8; 16];
    o.copy_from_slice(&d[..16]);
    o
}

/// The two AEADs of VMess bodies (the header always uses AES-128-GCM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AeadKind {
    Aes128Gcm,
    ChaCha20Poly1305,
}

/// One AEAD key; seals and opens in place with an explicit nonce and AAD.
pub struct Aead(LessSafeKey);

impl Aead {
    /// AES-128-GCM with a 16-byte key, or ChaCha20-Poly1305 keyed by `chacha_key(key)`.
    pub fn body(kind: AeadKind, key: &[u8; 16]) -> Result<Self, WireError> {
        match kind {
            AeadKind::Aes128Gcm => Self::new(&aead::AES_128_GCM, key),
            AeadKind::ChaCha20Poly1305 => Self::new(&aead::CHACHA20_POLY1305, &chacha_key(key)),
        }
    }

    pub fn aes128(key: &[u8; 16]) -> Result<Self, WireError> {
        Self::new(&aead::AES_128_GCM, key)
    }

    fn new(alg: &'static aead::Algorithm, key: &[u8]) -> Result<Self, WireError> {
        let k = UnboundKey::new(alg, key).map_err(|_| WireError::Unsupported("vmess: AEAD key length"))?;
        Ok(Aead(LessSafeKey::new(k)))
    }

    /// Encrypts `buf[start..]` in place and appends the tag.
    pub fn seal_append(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), WireError> {
        let region = buf
            .get_mut(start..)
            .ok_or(WireError::Unsupported("vmess: seal start beyond buffer"))?;
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), region)
            .map_err(|_| WireError::Unsupported("vmess: AEAD seal failed"))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypts `buf` (ciphertext ‖ tag) in place; returns the plaintext length.
    pub fn open_in_place(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8]) -> Result<usize, WireError> {
        if buf.len() < TAG_LEN {
            return Err(WireError::Malformed("vmess: sealed data shorter than its tag"));
        }
        self.0
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .map(|p| p.len())
            .map_err(|_| WireError::BadTag)
    }
}

/// 12-byte chunk nonce: `count` (2 BE) ‖ iv[2..12].
pub fn chunk_nonce(iv: &[u8; 16], count: u16) -> [u8; 12] {
    let mut n = [0u8; 12];
    n.copy_from_slice(&iv[..12]);
    n[..2].copy_from_slice(&count.to_be_bytes());
    n
}
