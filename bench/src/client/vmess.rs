//! VMess AEAD client side of the load generator (`vmess`: plain TCP, `vmess-tls`: inside TLS),
//! built on the data plane's public client pieces (`proto::vmess::client::ClientRequest`: auth
//! id, sealed header, body chunk codecs), which its own unit tests check against vectors and
//! its interop tests against sing-box and v2ray clients. Here [`self_check`] and every probe
//! check them against the sing-box, v2ray and shoes *servers* before anything is measured.
//!
//! ```text
//! request:  auth id (16) ‖ sealed header length (2 + 16) ‖ connection nonce (8)
//!           ‖ sealed header (ver iv key V opt P|sec 0 cmd port atyp addr padding fnv + 16)
//!           ‖ body chunks
//! response: sealed length (2 + 16) ‖ sealed header (V opt cmd cmdlen + 16) ‖ body chunks
//! body chunk (aes-128-gcm, ChunkStream | ChunkMasking | GlobalPadding):
//!           masked size (2) ‖ AEAD(payload) (len + 16) ‖ padding (0..63)
//! ```
//!
//! Options are what the sing-box and Xray clients send by default for an AEAD security:
//! chunk stream, chunk masking and global padding (Xray always pads; sing-box's
//! `global_padding` option). alterId 0 (AEAD header) everywhere; the user id is the uuid.
//!
//! [`self_check`]: crate::scenarios::self_check

use anyhow::{anyhow, Context};
use v2sp_dataplane::proto::vmess::body::OPT_GLOBAL_PADDING;
use v2sp_dataplane::proto::vmess::client::{ClientBody, ClientRequest};
use v2sp_dataplane::proto::vmess::crypto::cmd_key;
use v2sp_dataplane::proto::vmess::SEC_AES128_GCM;
use v2sp_dataplane::proto::Destination;

use super::ss::USER_UUID;
use super::vless::uuid_bytes;

pub const VMESS: &str = "vmess";
pub const VMESS_TLS: &str = "vmess-tls";
/// The body security every server is configured with (shoes needs it named in its config).
pub const SECURITY: &str = "aes-128-gcm";

/// One VMess connection's client state after the request was written.
pub struct VmessStream {
    req: ClientRequest,
    body: ClientBody,
    /// Downlink wire bytes not yet opened (the response header, or a partial chunk).
    carry: Vec<u8>,
    header_done: bool,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl VmessStream {
    /// Start a TCP request to `dest` for the bench user with `first` as the first body
    /// payload; appends the wire bytes (header, then `first` as chunks) to `out`.
    pub fn open_request(dest: &Destination, first: &[u8], out: &mut Vec<u8>) -> anyhow::Result<VmessStream> {
        let key = cmd_key(&uuid_bytes(USER_UUID)?);
        let mut req = ClientRequest::tcp(key, unix_now(), SEC_AES128_GCM, dest.clone());
        req.options |= OPT_GLOBAL_PADDING;
        out.extend_from_slice(&req.seal().map_err(|e| anyhow!("vmess header: {e}"))?);
        let mut body = req
            .body()
            .map_err(|e| anyhow!("vmess body: {e}"))?
            .context("vmess: aes-128-gcm has a chunk stream")?;
        if !first.is_empty() {
            body.writer
                .seal(first, out)
                .map_err(|e| anyhow!("vmess seal: {e}"))?;
        }
        Ok(VmessStream {
            req,
            body,
            carry: Vec::new(),
            header_done: false,
        })
    }

    /// Seal more client→server plaintext (never empty: an empty chunk ends the stream).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        if plain.is_empty() {
            return Ok(());
        }
        self.body
            .writer
            .seal(plain, out)
            .map_err(|e| anyhow!("vmess seal: {e}"))
    }

    /// Feed server→client wire bytes; appends the plaintext they complete.
    pub fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
        let owned;
        let mut data: &[u8] = if self.carry.is_empty() {
            wire
        } else {
            self.carry.extend_from_slice(wire);
            owned = std::mem::take(&mut self.carry);
            &owned
        };
        if !self.header_done {
            match self
                .req
                .open_response(data)
                .map_err(|e| anyhow!("vmess response header: {e}"))?
            {
                None => {
                    self.carry = data.to_vec();
                    return Ok(());
                }
                Some(n) => {
                    self.header_done = true;
                    data = data.get(n..).unwrap_or_default();
                }
            }
        }
        let n = self
            .body
            .reader
            .open(data, out)
            .map_err(|e| anyhow!("vmess open: {e}"))?;
        self.carry = data.get(n..).unwrap_or_default().to_vec();
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use v2sp_dataplane::proto::vmess::crypto::{auth_id_cipher, open_auth_id};

    #[test]
    fn request_starts_with_an_auth_id_for_the_bench_user() {
        let d = Destination::Ip("127.0.0.1:9".parse().unwrap());
        let mut out = Vec::new();
        let _s = VmessStream::open_request(&d, b"hello", &mut out).unwrap();
        let key = cmd_key(&uuid_bytes(USER_UUID).unwrap());
        let id: [u8; 16] = out[..16].try_into().unwrap();
        let t = open_auth_id(&auth_id_cipher(&key), &id).expect("auth id opens with the user's key");
        assert!(t.abs_diff(unix_now()) < 5);
        // auth id + sealed length + nonce + header (≥ 41 B + tag) + one chunk (2 + 5 + 16 + pad).
        assert!(out.len() >= 16 + 18 + 8 + 41 + 16 + 23, "{}", out.len());
    }
}
