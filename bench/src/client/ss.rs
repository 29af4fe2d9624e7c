//! Shadowsocks client side of the load generator, built on the data plane's public client
//! codecs (`proto::ss::aead::Aead2017Client`, `proto::ss::ss2022::Ss2022Client`), which the
//! data plane's own tests and `ss_framing` bench already check against its server codecs.
//! [`self_check`](crate::scenarios::self_check) checks them against shadowsocks-rust's
//! `ssserver` before anything is measured.
//!
//! ```text
//! AEAD-2017 request (what `open_request` writes):
//! +--------+-------------------------+--------------------------------------------+----
//! | salt   | len chunk (2 B + tag)   | ATYP addr port ‖ first payload (+ tag)     | ...
//! +--------+-------------------------+--------------------------------------------+----
//! SS-2022 request:
//! +--------+-------------+--------------------+----------------------------------------+----
//! | salt   | EIH (AES,   | fixed header chunk | ATYP addr port ‖ padlen ‖ pad ‖ first  | ...
//! |        | server PSK) | type ts len (+tag) | payload (+ tag)                        |
//! +--------+-------------+--------------------+----------------------------------------+----
//! ```
//!
//! Credentials follow the panels' rules (see deploy/README.md): AEAD-2017 password = the user's
//! uuid (key = EVP_BytesToKey); SS-2022 user PSK = first 16/32 characters of the uuid, server
//! PSK = the node's `server_key`.

use anyhow::{anyhow, Context};
use base64::Engine as _;
use v2sp_dataplane::proto::ss::aead::Aead2017Client;
use v2sp_dataplane::proto::ss::cipher::AeadKind;
use v2sp_dataplane::proto::ss::ss2022::Ss2022Client;
use v2sp_dataplane::proto::ss::{address, Method};
use v2sp_dataplane::proto::Destination;
use v2sp_shared::cred::secret_for;

/// The one benchmark user (all servers get exactly this user).
pub const USER_UUID: &str = "705d4ada-fc32-48de-951c-2ab9d5765ce0";

/// What a client needs to talk to a Shadowsocks server, and what the servers' configs need.
#[derive(Clone, Debug)]
pub struct SsCredentials {
    pub method: Method,
    /// AEAD-2017: EVP_BytesToKey(uuid). SS-2022: the user PSK (uuid prefix).
    pub user_key: Vec<u8>,
    /// SS-2022 server PSK (`server_key`), fixed per key length so runs are reproducible.
    pub server_psk: Option<Vec<u8>>,
}

impl SsCredentials {
    pub fn new(method: Method) -> anyhow::Result<Self> {
        let user_key = secret_for(method.cred_kind(), USER_UUID)
            .map_err(|e| anyhow!("user secret: {e}"))?
            .as_slice()
            .to_vec();
        let server_psk = method.is_2022().then(|| {
            let h = blake3::derive_key("v2sp-bench server psk", method.name().as_bytes());
            h[..method.aead().key_len()].to_vec()
        });
        Ok(SsCredentials {
            method,
            user_key,
            server_psk,
        })
    }

    /// AEAD-2017 password as a server config wants it (the uuid string).
    pub fn password_2017(&self) -> &'static str {
        USER_UUID
    }

    pub fn user_key_b64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.user_key)
    }

    pub fn server_psk_b64(&self) -> Option<String> {
        self.server_psk
            .as_ref()
            .map(|k| base64::engine::general_purpose::STANDARD.encode(k))
    }

    /// SIP023 identity headers exist for the AES 2022 methods only; ChaCha 2022 is single-key.
    pub fn uses_eih(&self) -> bool {
        self.method.is_2022() && self.method.aead() != AeadKind::ChaCha20Poly1305
    }
}

/// One client connection's codec state.
pub enum SsStream {
    Aead2017(Box<Aead2017Client>),
    Ss2022(Box<Ss2022Client>),
}

impl SsStream {
    /// Start a request to `dest` whose first payload is `first`; appends the wire bytes (salt,
    /// headers, first payload) to `out`.
    pub fn open_request(
        creds: &SsCredentials,
        dest: &Destination,
        first: &[u8],
        out: &mut Vec<u8>,
    ) -> anyhow::Result<SsStream> {
        let kind = creds.method.aead();
        if creds.method.is_2022() {
            let ipsk = if creds.uses_eih() {
                creds.server_psk.as_deref()
            } else {
                None
            };
            // SIP022: a request without initial payload must carry padding.
            let padding = if first.is_empty() { 16 } else { 0 };
            let mut c = Ss2022Client::new(kind, ipsk, &creds.user_key, dest, first, padding, unix_now())
                .map_err(|e| anyhow!("ss2022 request: {e}"))?;
            c.seal(&[], out).map_err(|e| anyhow!("ss2022 seal: {e}"))?;
            Ok(SsStream::Ss2022(Box::new(c)))
        } else {
            let mut c =
                Aead2017Client::new(kind, &creds.user_key).map_err(|e| anyhow!("aead client: {e}"))?;
            let mut plain = Vec::with_capacity(first.len() + 32);
            address::write(dest, &mut plain).map_err(|e| anyhow!("address: {e}"))?;
            plain.extend_from_slice(first);
            c.seal(&plain, out).map_err(|e| anyhow!("aead seal: {e}"))?;
            Ok(SsStream::Aead2017(Box::new(c)))
        }
    }

    /// Seal more client→server plaintext.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        match self {
            SsStream::Aead2017(c) => c.seal(plain, out),
            SsStream::Ss2022(c) => c.seal(plain, out),
        }
        .map_err(|e| anyhow!("seal: {e}"))
    }

    /// Feed server→client wire bytes; appends the plaintext they complete.
    pub fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        match self {
            SsStream::Aead2017(c) => c.open(wire, out).map_err(|e| anyhow!("open: {e}")),
            SsStream::Ss2022(c) => {
                c.open(wire, out).map_err(|e| anyhow!("open: {e}"))?;
                if let Some((_, false)) = c.response_checked {
                    return Err(anyhow!("SS-2022 response does not echo the request salt"));
                }
                Ok(())
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parse a method name, with the list of known names in the error.
pub fn parse_method(name: &str) -> anyhow::Result<Method> {
    Method::from_name(name).with_context(|| {
        format!(
            "unknown Shadowsocks method {name:?} (aes-128-gcm, aes-256-gcm, chacha20-ietf-poly1305, \
             2022-blake3-aes-128-gcm, 2022-blake3-aes-256-gcm, 2022-blake3-chacha20-poly1305)"
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn credentials_match_the_panel_rules() {
        let c = SsCredentials::new(Method::Blake3Aes128Gcm).unwrap();
        // deploy/README.md: user key = base64 of the first 16 characters of the uuid.
        assert_eq!(c.user_key_b64(), "NzA1ZDRhZGEtZmMzMi00OA==");
        assert_eq!(c.server_psk.as_ref().map(Vec::len), Some(16));
        let c = SsCredentials::new(Method::Aes256Gcm).unwrap();
        assert_eq!(c.user_key.len(), 32);
        assert!(c.server_psk.is_none());
    }

    #[test]
    fn request_starts_with_a_fresh_salt() {
        let c = SsCredentials::new(Method::Aes128Gcm).unwrap();
        let d = Destination::Ip("127.0.0.1:9".parse().unwrap());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        SsStream::open_request(&c, &d, b"x", &mut a).unwrap();
        SsStream::open_request(&c, &d, b"x", &mut b).unwrap();
        // salt 16 + len chunk 18 + (7 B address + 1 B payload + 16 B tag)
        assert_eq!(a.len(), 16 + 18 + 7 + 1 + 16);
        assert_ne!(a[..16], b[..16]);
    }
}
