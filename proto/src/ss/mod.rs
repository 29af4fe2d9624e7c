//! Shadowsocks AEAD-2017 and 2022 (sans-IO).
//!
//! ```text
//! method                          file        key/salt  users found by
//! aes-128-gcm                     aead.rs     16        trial decryption (O(users))
//! aes-256-gcm                     aead.rs     32        trial decryption
//! chacha20-ietf-poly1305          aead.rs     32        trial decryption
//! 2022-blake3-aes-128-gcm         ss2022.rs   16        identity header → lookup (O(1))
//! 2022-blake3-aes-256-gcm         ss2022.rs   32        identity header → lookup (O(1))
//! 2022-blake3-chacha20-poly1305   ss2022.rs   32        trial decryption (no EIH defined)
//! ```
//!
//! [`Method::handshake`] makes the per-connection [`StreamHandshake`]; [`Method::udp_codec`]
//! the node's [`PacketCodec`]. Salts go through `AuthContext::check_replay`, which the runtime
//! backs with `limits::replay::ReplayFilter` (60 s window covers both editions).

pub mod address;
pub mod aead;
pub mod cipher;
pub mod ss2022;

use v2sp_shared::cred::CredKind;

use self::cipher::AeadKind;
use crate::{Next, PacketCodec, RejectPolicy, Step, StreamHandshake, WireError};

/// A Shadowsocks cipher method as panels name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
    Blake3Aes128Gcm,
    Blake3Aes256Gcm,
    Blake3ChaCha20Poly1305,
}

impl Method {
    /// Parse a panel/config method name (aliases per spec §F.5).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "aes-128-gcm" | "aead_aes_128_gcm" => Method::Aes128Gcm,
            "aes-256-gcm" | "aead_aes_256_gcm" => Method::Aes256Gcm,
            "chacha20-ietf-poly1305" | "chacha20-poly1305" | "aead_chacha20_poly1305" => {
                Method::ChaCha20Poly1305
            }
            "2022-blake3-aes-128-gcm" => Method::Blake3Aes128Gcm,
            "2022-blake3-aes-256-gcm" => Method::Blake3Aes256Gcm,
            "2022-blake3-chacha20-poly1305" => Method::Blake3ChaCha20Poly1305,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Aes128Gcm => "aes-128-gcm",
            Method::Aes256Gcm => "aes-256-gcm",
            Method::ChaCha20Poly1305 => "chacha20-ietf-poly1305",
            Method::Blake3Aes128Gcm => "2022-blake3-aes-128-gcm",
            Method::Blake3Aes256Gcm => "2022-blake3-aes-256-gcm",
            Method::Blake3ChaCha20Poly1305 => "2022-blake3-chacha20-poly1305",
        }
    }

    pub fn aead(self) -> AeadKind {
        match self {
            Method::Aes128Gcm | Method::Blake3Aes128Gcm => AeadKind::Aes128Gcm,
            Method::Aes256Gcm | Method::Blake3Aes256Gcm => AeadKind::Aes256Gcm,
            Method::ChaCha20Poly1305 | Method::Blake3ChaCha20Poly1305 => AeadKind::ChaCha20Poly1305,
        }
    }

    pub fn is_2022(self) -> bool {
        matches!(
            self,
            Method::Blake3Aes128Gcm | Method::Blake3Aes256Gcm | Method::Blake3ChaCha20Poly1305
        )
    }

    /// The user-table secret this method needs (`cred::secret_for`).
    pub fn cred_kind(self) -> CredKind {
        match (self.is_2022(), self.aead().key_len()) {
            (false, 16) => CredKind::SsLegacy16,
            (false, _) => CredKind::SsLegacy32,
            (true, 16) => CredKind::Ss2022Psk16,
            (true, _) => CredKind::Ss2022Psk32,
        }
    }
}

/// A node's Shadowsocks inbound: method and (2022) server PSK.
#[derive(Clone, Copy, Debug)]
pub struct SsInbound {
    pub method: Method,
    cfg2022: Option<ss2022::Ss2022Config>,
}

impl SsInbound {
    /// `server_psk`: the panel's `server_key` decoded from base64 (2022 methods; ignored
    /// otherwise). Wrong length → config error.
    pub fn new(method: Method, server_psk: Option<&[u8]>) -> Result<Self, WireError> {
        let cfg2022 = if method.is_2022() {
            Some(ss2022::Ss2022Config::new(method.aead(), server_psk)?)
        } else {
            None
        };
        Ok(SsInbound { method, cfg2022 })
    }

    /// A fresh per-connection handshake.
    pub fn handshake(&self) -> Box<dyn StreamHandshake + Send> {
        match self.cfg2022 {
            Some(cfg) => Box::new(ss2022::Ss2022Handshake::new(cfg)),
            None => Box::new(aead::Aead2017Handshake::new(self.method.aead())),
        }
    }

    /// The node's UDP codec.
    pub fn udp_codec(&self) -> Result<Box<dyn PacketCodec>, WireError> {
        Ok(match self.cfg2022 {
            Some(cfg) => Box::new(ss2022::Ss2022Udp::new(cfg)?),
            None => Box::new(aead::Aead2017Udp::new(self.method.aead())),
        })
    }
}

/// A client we will not serve: SIP022 asks servers not to close right away, so both
/// generations drain until the handshake timeout (no distinctive reply or timing).
fn reject(error: WireError) -> Step {
    Step::Done(Next::Reject {
        error,
        policy: RejectPolicy::DrainUntilTimeout,
    })
}

/// The feed policy both generations' handshakes share, applied to one `step` over the bytes
/// buffered so far (`buffered` of them): still undecided past `max` bytes is garbage; any error
/// becomes a drain-until-timeout reject. Returns the step and whether the handshake is over
/// for good (rejected).
fn settle(step: Result<Step, WireError>, buffered: usize, max: usize) -> (Step, bool) {
    match step {
        // Bytes beyond what the handshake needs are fine (they go to the codec); only a
        // handshake that still cannot decide after this much is garbage.
        Ok(Step::NeedMore(_)) if buffered > max => (
            reject(WireError::Malformed("handshake longer than any valid request")),
            true,
        ),
        Ok(s) => {
            let rejected = matches!(s, Step::Done(Next::Reject { .. }));
            (s, rejected)
        }
        Err(e) => (reject(e), true),
    }
}

#[cfg(test)]
mod tests;
