//! `v2sp x25519` and `v2sp reality`: REALITY key pairs (spec §F.3).
//!
//! Derived keys: private = SHA-256 of `<nodeId><lowercase type><token>`, X25519-clamped, so an
//! operator can re-create a node's key from the panel's node settings alone.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};

pub struct KeyPair {
    pub private: [u8; 32],
    pub public: [u8; 32],
}

fn clamp(mut k: [u8; 32]) -> [u8; 32] {
    k[0] &= 248;
    k[31] &= 127;
    k[31] |= 64;
    k
}

fn pair(private: [u8; 32]) -> KeyPair {
    let private = clamp(private);
    let public = PublicKey::from(&StaticSecret::from(private)).to_bytes();
    KeyPair { private, public }
}

/// Key pair derived from node settings.
pub fn derive(node_id: i64, node_type: &str, token: &str) -> KeyPair {
    let seed = format!("{node_id}{}{token}", node_type.to_ascii_lowercase());
    pair(Sha256::digest(seed.as_bytes()).into())
}

/// A random key pair, or the public key of a given private key (base64url).
pub fn from_private_or_random(private_b64: Option<&str>) -> Result<KeyPair, String> {
    match private_b64 {
        Some(s) => {
            let b = URL_SAFE_NO_PAD
                .decode(s.trim().trim_end_matches('='))
                .map_err(|e| format!("private key is not base64url: {e}"))?;
            let k: [u8; 32] = b
                .try_into()
                .map_err(|_| "private key must be 32 bytes".to_string())?;
            Ok(pair(k))
        }
        None => {
            let mut k = [0u8; 32];
            rand::Rng::fill(&mut rand::rng(), &mut k[..]);
            Ok(pair(k))
        }
    }
}

impl KeyPair {
    pub fn print(&self) -> String {
        format!(
            "Private key: {}\nPublic key: {}\n",
            URL_SAFE_NO_PAD.encode(self.private),
            URL_SAFE_NO_PAD.encode(self.public)
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn derivation_is_stable_clamped_and_case_insensitive_in_type() {
        let a = derive(26, "VLESS", "tok");
        let b = derive(26, "vless", "tok");
        assert_eq!(a.private, b.private);
        assert_eq!(a.private[0] & 7, 0);
        assert_eq!(a.private[31] & 0xC0, 0x40);
        let expect: [u8; 32] = clamp(Sha256::digest(b"26vlesstok").into());
        assert_eq!(a.private, expect);
    }

    #[test]
    fn public_from_private_round_trip() {
        let p = derive(1, "vless", "x");
        let again = from_private_or_random(Some(&URL_SAFE_NO_PAD.encode(p.private))).unwrap();
        assert_eq!(again.public, p.public);
        assert!(from_private_or_random(Some("!!")).is_err());
    }
}
