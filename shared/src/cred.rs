//! Per-protocol credentials derived from the panel's user uuid (spec §F.5), and the lookup key
//! each protocol finds a user by (architecture-research §3.7).
//!
//! The panel hands out one uuid per user; it is the password for every protocol. The control
//! plane stores the *secret* a protocol needs in the shared user table, and indexes it by the
//! *lookup key* the client's handshake reveals.

use md5::{Digest as _, Md5};
use sha2::{Sha224, Sha256};

/// Which secret a node's users carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u32)]
pub enum CredKind {
    /// VLESS: the 16 uuid bytes, looked up directly.
    VlessUuid = 1,
    /// VMess: the 16 uuid bytes; no lookup key (AuthID trial decryption).
    VmessUuid = 2,
    /// Trojan: SHA-224 of the password (the client sends it hex-encoded).
    TrojanSha224 = 3,
    /// Shadowsocks AEAD (2017): EVP_BytesToKey(password) of `key_len` bytes; trial decryption.
    SsLegacy16 = 4,
    SsLegacy32 = 5,
    /// Shadowsocks 2022: the user PSK, i.e. the first 16/32 characters of the uuid string.
    Ss2022Psk16 = 6,
    Ss2022Psk32 = 7,
    /// Hysteria2 / AnyTLS: SHA-256 of the password.
    Sha256Password = 8,
}

impl CredKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::VlessUuid,
            2 => Self::VmessUuid,
            3 => Self::TrojanSha224,
            4 => Self::SsLegacy16,
            5 => Self::SsLegacy32,
            6 => Self::Ss2022Psk16,
            7 => Self::Ss2022Psk32,
            8 => Self::Sha256Password,
            _ => return None,
        })
    }

    /// Whether users are found through the hash index (else by trying each user).
    pub fn has_lookup_key(self) -> bool {
        !matches!(self, Self::VmessUuid | Self::SsLegacy16 | Self::SsLegacy32)
    }
}

/// Why a credential could not be derived.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredError {
    #[error("user uuid {0:?} is not a valid UUID")]
    BadUuid(String),
    #[error("user uuid {0:?} is shorter than the {1} characters this cipher needs")]
    TooShort(String, usize),
}

/// A secret of at most 32 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Secret {
    pub bytes: [u8; 32],
    pub len: u8,
}

impl Secret {
    pub fn from_slice(s: &[u8]) -> Self {
        let mut bytes = [0u8; 32];
        let n = s.len().min(32);
        bytes[..n].copy_from_slice(&s[..n]);
        Secret { bytes, len: n as u8 }
    }
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(32)]
    }
}

/// The 16 bytes of a uuid in text form.
pub fn parse_uuid(uuid: &str) -> Result<[u8; 16], CredError> {
    uuid::Uuid::parse_str(uuid.trim())
        .map(|u| *u.as_bytes())
        .map_err(|_| CredError::BadUuid(uuid.to_string()))
}

/// OpenSSL's EVP_BytesToKey with MD5 and no salt, as Shadowsocks derives a key from a password.
pub fn evp_bytes_to_key(password: &[u8], key_len: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(key_len + 16);
    let mut prev: Vec<u8> = Vec::new();
    while key.len() < key_len {
        let mut h = Md5::new();
        h.update(&prev);
        h.update(password);
        prev = h.finalize().to_vec();
        key.extend_from_slice(&prev);
    }
    key.truncate(key_len);
    key
}

/// Derive the secret stored in the user table for a user with this panel uuid.
pub fn secret_for(kind: CredKind, uuid: &str) -> Result<Secret, CredError> {
    let uuid = uuid.trim();
    Ok(match kind {
        CredKind::VlessUuid | CredKind::VmessUuid => Secret::from_slice(&parse_uuid(uuid)?),
        CredKind::TrojanSha224 => Secret::from_slice(&Sha224::digest(uuid.as_bytes())),
        CredKind::SsLegacy16 => Secret::from_slice(&evp_bytes_to_key(uuid.as_bytes(), 16)),
        CredKind::SsLegacy32 => Secret::from_slice(&evp_bytes_to_key(uuid.as_bytes(), 32)),
        CredKind::Ss2022Psk16 | CredKind::Ss2022Psk32 => {
            let n = if kind == CredKind::Ss2022Psk16 { 16 } else { 32 };
            let b = uuid.as_bytes();
            if b.len() < n {
                return Err(CredError::TooShort(uuid.to_string(), n));
            }
            Secret::from_slice(&b[..n])
        }
        CredKind::Sha256Password => Secret::from_slice(&Sha256::digest(uuid.as_bytes())),
    })
}

/// The key a client's handshake reveals, from which the user is found. `None` for protocols
/// that must try every user.
pub fn lookup_key(kind: CredKind, secret: &[u8]) -> Option<Secret> {
    match kind {
        CredKind::VlessUuid | CredKind::TrojanSha224 | CredKind::Sha256Password => {
            Some(Secret::from_slice(secret))
        }
        CredKind::Ss2022Psk16 | CredKind::Ss2022Psk32 => {
            Some(Secret::from_slice(&blake3::hash(secret).as_bytes()[..16]))
        }
        CredKind::VmessUuid | CredKind::SsLegacy16 | CredKind::SsLegacy32 => None,
    }
}

/// The SS-2022 client password a panel hands out: `base64(server_key) : base64(uPSK)`.
pub fn ss2022_user_key_b64(kind: CredKind, uuid: &str) -> Result<String, CredError> {
    use base64::Engine as _;
    let s = secret_for(kind, uuid)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(s.as_slice()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const U: &str = "a7b4b8ab-42d7-4c48-a0c5-91fd4bd53c37";

    #[test]
    fn evp_bytes_to_key_matches_openssl() {
        // `openssl enc -aes-128-cbc -k foobar -nosalt -P -md md5` → key 3858F62230AC3C915F300C664312C63F
        assert_eq!(
            hex::encode(evp_bytes_to_key(b"foobar", 16)),
            "3858f62230ac3c915f300c664312c63f"
        );
        let k32 = evp_bytes_to_key(b"foobar", 32);
        assert_eq!(&k32[..16], &evp_bytes_to_key(b"foobar", 16)[..]);
    }

    #[test]
    fn ss2022_psk_is_uuid_prefix() {
        let s = secret_for(CredKind::Ss2022Psk16, U).unwrap();
        assert_eq!(s.as_slice(), &U.as_bytes()[..16]);
        assert_eq!(ss2022_user_key_b64(CredKind::Ss2022Psk32, U).unwrap().len(), 44);
        let k = lookup_key(CredKind::Ss2022Psk16, s.as_slice()).unwrap();
        assert_eq!(k.len, 16);
    }

    #[test]
    fn trojan_is_sha224() {
        let s = secret_for(CredKind::TrojanSha224, "password").unwrap();
        assert_eq!(
            hex::encode(s.as_slice()),
            "d63dc919e201d7bc4c825630d2cf25fdc93d4b2f0d46706d29038d01"
        );
    }

    #[test]
    fn bad_uuid_is_an_error_not_a_panic() {
        assert!(matches!(
            secret_for(CredKind::VlessUuid, "nope"),
            Err(CredError::BadUuid(_))
        ));
        assert!(matches!(
            secret_for(CredKind::Ss2022Psk32, "short"),
            Err(CredError::TooShort(_, 32))
        ));
    }
}
