//! A small AEAD facade over aws-lc-rs for the Shadowsocks codecs.
//!
//! ```text
//! chunk on the wire:   +---------------------------+---------+
//!                      | ciphertext (= plain len)  | tag 16B |
//!                      +---------------------------+---------+
//! nonce (TCP):         12-byte little-endian counter, +1 after every seal/open
//! XChaCha20-Poly1305:  HChaCha20(key, nonce[0..16]) as key, 0u32 ‖ nonce[16..24] as nonce
//! ```
//!
//! Everything seals and opens in place: `seal_append` encrypts bytes the caller already placed
//! at the end of its output buffer and appends the tag; `open_in_place` decrypts a slice that
//! holds ciphertext ‖ tag and returns the plaintext prefix.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{DecryptingKey, DecryptionContext, EncryptingKey, UnboundCipherKey};

use crate::WireError;

/// AEAD tag length of every Shadowsocks cipher.
pub const TAG_LEN: usize = 16;

/// The AEAD primitive under a Shadowsocks method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AeadKind {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl AeadKind {
    pub fn key_len(self) -> usize {
        match self {
            AeadKind::Aes128Gcm => 16,
            AeadKind::Aes256Gcm | AeadKind::ChaCha20Poly1305 => 32,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            AeadKind::Aes128Gcm => &aead::AES_128_GCM,
            AeadKind::Aes256Gcm => &aead::AES_256_GCM,
            AeadKind::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// One AEAD key.
pub struct AeadCipher {
    key: LessSafeKey,
}

impl AeadCipher {
    /// `key` must be exactly `kind.key_len()` bytes (callers derive it; a mismatch is a bug, and
    /// is reported rather than panicking).
    pub fn new(kind: AeadKind, key: &[u8]) -> Result<Self, WireError> {
        let unbound = UnboundKey::new(kind.algorithm(), key)
            .map_err(|_| WireError::Unsupported("AEAD key has the wrong length"))?;
        Ok(AeadCipher {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Encrypt `buf[start..]` in place and append the tag to `buf`.
    pub fn seal_append(&self, nonce: [u8; 12], buf: &mut Vec<u8>, start: usize) -> Result<(), WireError> {
        let region = buf
            .get_mut(start..)
            .ok_or(WireError::Unsupported("seal start beyond buffer"))?;
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), region)
            .map_err(|_| WireError::Unsupported("AEAD seal failed"))?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Encrypt `region` in place, writing the tag to `tag_out` (exactly `TAG_LEN` bytes).
    pub fn seal_in_place(
        &self,
        nonce: [u8; 12],
        region: &mut [u8],
        tag_out: &mut [u8],
    ) -> Result<(), WireError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), region)
            .map_err(|_| WireError::Unsupported("AEAD seal failed"))?;
        if tag_out.len() != TAG_LEN {
            return Err(WireError::Unsupported("tag room is not 16 bytes"));
        }
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Decrypt `buf` (ciphertext ‖ tag) in place; returns the plaintext length.
    pub fn open_in_place(&self, nonce: [u8; 12], buf: &mut [u8]) -> Result<usize, WireError> {
        if buf.len() < TAG_LEN {
            return Err(WireError::Malformed("AEAD chunk shorter than its tag"));
        }
        self.key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), buf)
            .map(|p| p.len())
            .map_err(|_| WireError::BadTag)
    }
}

/// The TCP chunk nonce: a 96-bit little-endian counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NonceCounter([u8; 12]);

impl NonceCounter {
    /// The current nonce, then advance.
    pub fn advance(&mut self) -> [u8; 12] {
        let cur = self.0;
        for b in self.0.iter_mut() {
            let (v, carry) = b.overflowing_add(1);
            *b = v;
            if !carry {
                break;
            }
        }
        cur
    }
}

/// One direction of a chunked stream: a key and its nonce counter.
pub struct ChunkCipher {
    aead: AeadCipher,
    nonce: NonceCounter,
}

impl ChunkCipher {
    pub fn new(aead: AeadCipher) -> Self {
        ChunkCipher {
            aead,
            nonce: NonceCounter::default(),
        }
    }

    /// Append `plain` sealed as one chunk to `out`.
    pub fn seal_chunk(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let start = out.len();
        out.extend_from_slice(plain);
        self.aead.seal_append(self.nonce.advance(), out, start)
    }

    /// Seal `region` as one chunk in place, its tag into `tag_out`.
    pub fn seal_chunk_in_place(&mut self, region: &mut [u8], tag_out: &mut [u8]) -> Result<(), WireError> {
        self.aead.seal_in_place(self.nonce.advance(), region, tag_out)
    }

    /// Advance the nonce past a chunk opened elsewhere (handshake trial decryption).
    pub fn skip_one(&mut self) {
        self.nonce.advance();
    }

    /// Open one chunk (ciphertext ‖ tag) in place; returns the plaintext length. The nonce
    /// advances even on failure: a failed chunk ends the stream anyway.
    pub fn open_chunk(&mut self, buf: &mut [u8]) -> Result<usize, WireError> {
        self.aead.open_in_place(self.nonce.advance(), buf)
    }
}

fn aes_key(key: &[u8]) -> Result<UnboundCipherKey, WireError> {
    let alg = match key.len() {
        16 => &aws_lc_rs::cipher::AES_128,
        32 => &aws_lc_rs::cipher::AES_256,
        _ => return Err(WireError::Unsupported("AES key must be 16 or 32 bytes")),
    };
    UnboundCipherKey::new(alg, key).map_err(|_| WireError::Unsupported("AES key rejected"))
}

/// AES on a single 16-byte block (ECB), used by SS-2022 for identity and UDP separate headers.
pub struct AesBlock {
    enc: EncryptingKey,
    dec: DecryptingKey,
}

impl AesBlock {
    pub fn new(key: &[u8]) -> Result<Self, WireError> {
        let enc = EncryptingKey::ecb(aes_key(key)?).map_err(|_| WireError::Unsupported("AES-ECB"))?;
        let dec = DecryptingKey::ecb(aes_key(key)?).map_err(|_| WireError::Unsupported("AES-ECB"))?;
        Ok(AesBlock { enc, dec })
    }

    pub fn encrypt(&self, block: &mut [u8; 16]) -> Result<(), WireError> {
        self.enc
            .encrypt(block)
            .map(|_| ())
            .map_err(|_| WireError::Unsupported("AES-ECB encrypt failed"))
    }

    pub fn decrypt(&self, block: &mut [u8; 16]) -> Result<(), WireError> {
        self.dec
            .decrypt(block, DecryptionContext::None)
            .map(|_| ())
            .map_err(|_| WireError::Unsupported("AES-ECB decrypt failed"))
    }
}

/// Decrypt one block under a key used once (SS-2022 TCP identity header).
pub fn aes_decrypt_block(key: &[u8], block: &mut [u8; 16]) -> Result<(), WireError> {
    let dec = DecryptingKey::ecb(aes_key(key)?).map_err(|_| WireError::Unsupported("AES-ECB"))?;
    dec.decrypt(block, DecryptionContext::None)
        .map(|_| ())
        .map_err(|_| WireError::Unsupported("AES-ECB decrypt failed"))
}

/// Encrypt one block under a key used once (test clients build identity headers with it).
pub fn aes_encrypt_block(key: &[u8], block: &mut [u8; 16]) -> Result<(), WireError> {
    let enc = EncryptingKey::ecb(aes_key(key)?).map_err(|_| WireError::Unsupported("AES-ECB"))?;
    enc.encrypt(block)
        .map(|_| ())
        .map_err(|_| WireError::Unsupported("AES-ECB encrypt failed"))
}

fn quarter_round(s: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(16);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(12);
    s[a] = s[a].wrapping_add(s[b]);
    s[d] = (s[d] ^ s[a]).rotate_left(8);
    s[c] = s[c].wrapping_add(s[d]);
    s[b] = (s[b] ^ s[c]).rotate_left(7);
}

fn le_word(b: &[u8], i: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(src) = b.get(4 * i..4 * i + 4) {
        w.copy_from_slice(src);
    }
    u32::from_le_bytes(w)
}

/// HChaCha20 (draft-irtf-cfrg-xchacha §2.2): the ChaCha20 block function without the final
/// addition, keeping state words 0..4 and 12..16 as a 256-bit subkey.
pub fn hchacha20(key: &[u8; 32], nonce16: &[u8; 16]) -> [u8; 32] {
    let mut s = [0u32; 16];
    s[0] = 0x6170_7865;
    s[1] = 0x3320_646e;
    s[2] = 0x7962_2d32;
    s[3] = 0x6b20_6574;
    for i in 0..8 {
        s[4 + i] = le_word(key, i);
    }
    for i in 0..4 {
        s[12 + i] = le_word(nonce16, i);
    }
    for _ in 0..10 {
        quarter_round(&mut s, 0, 4, 8, 12);
        quarter_round(&mut s, 1, 5, 9, 13);
        quarter_round(&mut s, 2, 6, 10, 14);
        quarter_round(&mut s, 3, 7, 11, 15);
        quarter_round(&mut s, 0, 5, 10, 15);
        quarter_round(&mut s, 1, 6, 11, 12);
        quarter_round(&mut s, 2, 7, 8, 13);
        quarter_round(&mut s, 3, 4, 9, 14);
    }
    let mut out = [0u8; 32];
    for (i, w) in [s[0], s[1], s[2], s[3], s[12], s[13], s[14], s[15]]
        .iter()
        .enumerate()
    {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

fn xchacha_parts(key: &[u8; 32], nonce24: &[u8; 24]) -> Result<(AeadCipher, [u8; 12]), WireError> {
    let mut n16 = [0u8; 16];
    n16.copy_from_slice(&nonce24[..16]);
    let sub = hchacha20(key, &n16);
    let mut n12 = [0u8; 12];
    n12[4..].copy_from_slice(&nonce24[16..]);
    Ok((AeadCipher::new(AeadKind::ChaCha20Poly1305, &sub)?, n12))
}

/// XChaCha20-Poly1305 seal of `buf[start..]`, appending the tag.
pub fn xchacha_seal_append(
    key: &[u8; 32],
    nonce24: &[u8; 24],
    buf: &mut Vec<u8>,
    start: usize,
) -> Result<(), WireError> {
    let (c, n) = xchacha_parts(key, nonce24)?;
    c.seal_append(n, buf, start)
}

/// XChaCha20-Poly1305 open in place; returns the plaintext length.
pub fn xchacha_open_in_place(key: &[u8; 32], nonce24: &[u8; 24], buf: &mut [u8]) -> Result<usize, WireError> {
    let (c, n) = xchacha_parts(key, nonce24)?;
    c.open_in_place(n, buf)
}

/// Fill `buf` from the system CSPRNG.
pub fn random_bytes(buf: &mut [u8]) -> Result<(), WireError> {
    aws_lc_rs::rand::fill(buf).map_err(|_| WireError::Unsupported("system RNG failed"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nonce_counter_is_little_endian_with_carry() {
        let mut n = NonceCounter::default();
        assert_eq!(n.advance(), [0; 12]);
        assert_eq!(n.advance()[0], 1);
        let mut n = NonceCounter([0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        n.advance();
        assert_eq!(n.advance(), [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn hchacha20_known_answer() {
        // draft-irtf-cfrg-xchacha-03 §2.2.1
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let nonce = hex::decode("000000090000004a0000000031415927").unwrap();
        let out = hchacha20(&key, &nonce.try_into().unwrap());
        assert_eq!(
            hex::encode(out),
            "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
        );
    }

    #[test]
    fn aes_block_round_trip_and_fips197_vector() {
        // FIPS-197 C.1 AES-128
        let key = hex::decode("000102030405060708090a0b0c0d0e0f").unwrap();
        let mut b: [u8; 16] = hex::decode("00112233445566778899aabbccddeeff")
            .unwrap()
            .try_into()
            .unwrap();
        let a = AesBlock::new(&key).unwrap();
        a.encrypt(&mut b).unwrap();
        assert_eq!(hex::encode(b), "69c4e0d86a7b0430d8cdb78070b4c55a");
        a.decrypt(&mut b).unwrap();
        assert_eq!(hex::encode(b), "00112233445566778899aabbccddeeff");
    }

    #[test]
    fn chunk_round_trip_and_tamper() {
        for kind in [
            AeadKind::Aes128Gcm,
            AeadKind::Aes256Gcm,
            AeadKind::ChaCha20Poly1305,
        ] {
            let key = vec![7u8; kind.key_len()];
            let mut s = ChunkCipher::new(AeadCipher::new(kind, &key).unwrap());
            let mut o = ChunkCipher::new(AeadCipher::new(kind, &key).unwrap());
            let mut wire = Vec::new();
            s.seal_chunk(b"hello", &mut wire).unwrap();
            s.seal_chunk(b"world", &mut wire).unwrap();
            let (a, b) = wire.split_at_mut(5 + TAG_LEN);
            assert_eq!(o.open_chunk(a).unwrap(), 5);
            assert_eq!(&a[..5], b"hello");
            b[0] ^= 1;
            assert_eq!(o.open_chunk(b), Err(WireError::BadTag));
        }
    }

    #[test]
    fn xchacha_round_trip() {
        let key = [3u8; 32];
        let nonce = [9u8; 24];
        let mut buf = b"xx".to_vec();
        buf.extend_from_slice(b"payload");
        xchacha_seal_append(&key, &nonce, &mut buf, 2).unwrap();
        let n = xchacha_open_in_place(&key, &nonce, &mut buf[2..]).unwrap();
        assert_eq!(&buf[2..2 + n], b"payload");
    }
}
