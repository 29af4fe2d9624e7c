//! VMess AEAD (alterId 0) server side, as Xray/v2ray/sing-box serve it.
//!
//! ```text
//! request:
//! +----------+----------------------+-------------+-----------------------------+------
//! | auth id  | header length sealed | conn. nonce | header sealed               | body
//! |   16 B   | 2 B BE + 16 B tag    |    8 B      | L B + 16 B tag              | chunks
//! +----------+----------------------+-------------+-----------------------------+------
//! length: AES-128-GCM key KDF16(cmdKey, "VMess Header AEAD Key_Length", authid, nonce),
//!         nonce KDF(cmdKey, "VMess Header AEAD Nonce_Length", authid, nonce)[..12], AAD authid
//! header: same with "VMess Header AEAD Key" / "VMess Header AEAD Nonce"
//!
//! header plaintext:
//! +-----+-------+--------+---+-----+---------+-----+-----+------+------+------+---------+-------+
//! | ver | iv    | key    | V | opt | P<<4|Sec| rsv | cmd | port | atyp | addr | padding | FNV1a |
//! |  1  | 16    | 16     | 1 |  1  |    1    |  1  |  1  | 2 BE |  1   | var  |   P     | 4 BE  |
//! +-----+-------+--------+---+-----+---------+-----+-----+------+------+------+---------+-------+
//! ver = 1; Sec: 3 aes-128-gcm, 4 chacha20-poly1305, 5 none, 6 zero; cmd: 1 TCP, 2 UDP, 3 mux
//! atyp: 1 IPv4, 2 domain (1 B length + name), 3 IPv6; FNV1a-32 over everything before it
//!
//! response (before the first body chunk):
//! +--------------------------+---------------------------------+-------
//! | length sealed (2+16 B)   | [V, 0, 0, 0] sealed (4+16 B)    | body chunks
//! +--------------------------+---------------------------------+-------
//! response key/iv = SHA-256(request key/iv)[..16]; AES-128-GCM, no AAD:
//! length key KDF16(rkey, "AEAD Resp Header Len Key"), nonce KDF(riv, "AEAD Resp Header Len IV")
//! header key KDF16(rkey, "AEAD Resp Header Key"),     nonce KDF(riv, "AEAD Resp Header IV")
//! ```
//!
//! Users are found by trying each user's auth-id key ([`users::UserKeys`], cached per core);
//! a bad auth id, timestamp or replay is drained like Xray does (no distinctive reply). Body
//! framing is in [`body`]; UDP (cmd 2) carries one datagram per chunk ([`udp`]). Mux (cmd 3)
//! is refused.

pub mod body;
pub mod client;
pub mod crypto;
mod mask;
#[cfg(feature = "vless")]
pub mod mux;
pub mod udp;
pub mod users;

use std::cell::RefCell;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;

use v2sp_shared::shm::UserRef;

use crate::{AuthContext, Destination, Next, RejectPolicy, Step, StreamCodec, StreamHandshake, WireError};
use body::{BodyParams, ChunkReader, ChunkWriter, Security, ServerBody, OPT_CHUNK_STREAM};
use crypto::{
    kdf12, kdf16, sha256_16, Aead, AeadKind, HEADER_IV, HEADER_KEY, HEADER_LEN_IV, HEADER_LEN_KEY,
    MAX_SKEW_S, RESP_HEADER_IV, RESP_HEADER_KEY, RESP_HEADER_LEN_IV, RESP_HEADER_LEN_KEY, TAG_LEN,
};
use users::UserKeys;

pub const VERSION: u8 = 1;
pub const SEC_AES128_GCM: u8 = 3;
pub const SEC_CHACHA20_POLY1305: u8 = 4;
pub const SEC_NONE: u8 = 5;
pub const SEC_ZERO: u8 = 6;
pub const CMD_TCP: u8 = 1;
pub const CMD_UDP: u8 = 2;
pub const CMD_MUX: u8 = 3;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 2;
const ATYP_V6: u8 = 3;

pub const AUTH_ID_LEN: usize = 16;
/// auth id + sealed length + connection nonce.
pub const PREFIX_LEN: usize = AUTH_ID_LEN + 2 + TAG_LEN + 8;
/// Largest header plaintext we accept: fixed 41 B + 255 B domain + 15 B padding + FNV, rounded.
pub const MAX_HEADER: usize = 512;

/// Parsed request header.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub iv: [u8; 16],
    pub key: [u8; 16],
    /// Response authentication byte (echoed in the response header).
    pub v: u8,
    pub options: u8,
    pub security: u8,
    pub cmd: u8,
    /// `None` for mux.
    pub dest: Option<Destination>,
}

fn arr16(b: &[u8]) -> Option<[u8; 16]> {
    b.try_into().ok()
}

/// Parses the decrypted header (checks version and FNV checksum).
pub fn parse_header(h: &[u8]) -> Result<Request, WireError> {
    const SHORT: WireError = WireError::Malformed("vmess: header too short");
    let fixed = h.get(..38).ok_or(SHORT)?;
    let (&ver, rest) = fixed.split_first().ok_or(SHORT)?;
    if ver != VERSION {
        return Err(WireError::Malformed("vmess: version is not 1"));
    }
    let iv = rest.get(..16).and_then(arr16).ok_or(SHORT)?;
    let key = rest.get(16..32).and_then(arr16).ok_or(SHORT)?;
    let (v, options, p_sec, cmd) = match rest.get(32..37) {
        Some(&[v, o, ps, _rsv, c]) => (v, o, ps, c),
        _ => return Err(SHORT),
    };
    let padding = usize::from(p_sec >> 4);
    let security = p_sec & 0x0f;
    let mut at = 38;
    let dest = match cmd {
        CMD_TCP | CMD_UDP => {
            let port = match h.get(at..at + 2) {
                Some(&[a, b]) => u16::from_be_bytes([a, b]),
                _ => return Err(SHORT),
            };
            at += 2;
            let atyp = *h.get(at).ok_or(SHORT)?;
            at += 1;
            let dest = match atyp {
                ATYP_V4 => {
                    let b: [u8; 4] = h.get(at..at + 4).and_then(|b| b.try_into().ok()).ok_or(SHORT)?;
                    at += 4;
                    Destination::Ip(SocketAddr::new(Ipv4Addr::from(b).into(), port))
                }
                ATYP_V6 => {
                    let b = h.get(at..at + 16).and_then(arr16).ok_or(SHORT)?;
                    at += 16;
                    Destination::Ip(SocketAddr::new(Ipv6Addr::from(b).into(), port))
                }
                ATYP_DOMAIN => {
                    let n = usize::from(*h.get(at).ok_or(SHORT)?);
                    if n == 0 {
                        return Err(WireError::Malformed("vmess: empty domain"));
                    }
                    let name = h.get(at + 1..at + 1 + n).ok_or(SHORT)?;
                    at += 1 + n;
                    let name = std::str::from_utf8(name)
                        .map_err(|_| WireError::Malformed("vmess: domain is not UTF-8"))?;
                    Destination::Domain(name.to_string(), port)
                }
                _ => return Err(WireError::Malformed("vmess: unknown address type")),
            };
            Some(dest)
        }
        CMD_MUX => None,
        _ => return Err(WireError::Malformed("vmess: unknown command")),
    };
    at += padding;
    let covered = h.get(..at).ok_or(SHORT)?;
    let sum = match h.get(at..at + 4) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => return Err(SHORT),
    };
    if crypto::fnv1a32(covered) != sum {
        return Err(WireError::Malformed("vmess: header checksum mismatch"));
    }
    Ok(Request {
        iv,
        key,
        v,
        options,
        security,
        cmd,
        dest,
    })
}

/// The 38-byte AEAD response header for a request with `key`/`iv` and response byte `v`.
pub fn response_header(v: u8, response_key: &[u8; 16], response_iv: &[u8; 16]) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(2 * (TAG_LEN + 2) + 2);
    let plain = [v, 0, 0, 0];
    out.extend_from_slice(&(plain.len() as u16).to_be_bytes());
    Aead::aes128(&kdf16(response_key, &[RESP_HEADER_LEN_KEY]))?.seal_append(
        kdf12(response_iv, &[RESP_HEADER_LEN_IV]),
        &[],
        &mut out,
        0,
    )?;
    let at = out.len();
    out.extend_from_slice(&plain);
    Aead::aes128(&kdf16(response_key, &[RESP_HEADER_KEY]))?.seal_append(
        kdf12(response_iv, &[RESP_HEADER_IV]),
        &[],
        &mut out,
        at,
    )?;
    Ok(out)
}

/// Key and nonce of the sealed header length (`label_key`/`label_iv` pick length or header).
fn header_aead(
    cmd_key: &[u8; 16],
    auth_id: &[u8],
    nonce: &[u8],
    label_key: &[u8],
    label_iv: &[u8],
) -> Result<(Aead, [u8; 12]), WireError> {
    let k = kdf16(cmd_key, &[label_key, auth_id, nonce]);
    let n = kdf12(cmd_key, &[label_iv, auth_id, nonce]);
    Ok((Aead::aes128(&k)?, n))
}

/// A node's VMess inbound on one core: the per-core user key cache shared by its handshakes.
#[derive(Default)]
pub struct VmessInbound {
    keys: Rc<RefCell<UserKeys>>,
}

impl VmessInbound {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn handshake(&self) -> VmessHandshake {
        VmessHandshake {
            keys: self.keys.clone(),
            buf: Vec::new(),
            user: None,
            finished: false,
        }
    }
}

/// One connection's header state.
pub struct VmessHandshake {
    keys: Rc<RefCell<UserKeys>>,
    buf: Vec<u8>,
    /// The user and command key once the auth id matched.
    user: Option<(UserRef, [u8; 16])>,
    finished: bool,
}

fn reject(error: WireError) -> Step {
    reject_after(error, 0)
}

/// `extra`: bytes past the 16-byte auth id the handshake has already read; Xray's drain
/// counts them too (they sit in its buffered reader).
fn reject_after(error: WireError, extra: usize) -> Step {
    let extra = u32::try_from(extra).unwrap_or(u32::MAX);
    Step::Done(Next::Reject {
        error,
        policy: RejectPolicy::DrainThenClose(drain_len(rand_below(MAX_RAND_DRAIN)).saturating_sub(extra)),
    })
}

/// Xray's VMess server, on a header it cannot open, reads a further `54 + base + r` bytes
/// and then closes, where `base < 3266` is fixed per server (from its behaviour seed) and
/// `r < 64` is drawn per connection; so a prober sees the same cut-off window from every
/// server of a kind rather than an immediate, distinctive close. Our `base` is drawn once per
/// process.
const DRAIN_FOUNDATION: u32 = 16 + 38;
const MAX_BASE_DRAIN: u32 = 3266;
const MAX_RAND_DRAIN: u32 = 64;

fn drain_len(r: u32) -> u32 {
    static BASE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    DRAIN_FOUNDATION + *BASE.get_or_init(|| rand_below(MAX_BASE_DRAIN)) + r.min(MAX_RAND_DRAIN - 1)
}

/// Uniform-enough random number below `n` (n > 0), from the system RNG.
fn rand_below(n: u32) -> u32 {
    let mut b = [0u8; 4];
    // Without randomness the bound itself is as undistinctive as any other draw.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return n / 2;
    }
    u32::from_le_bytes(b) % n.max(1)
}

impl VmessHandshake {
    fn match_auth_id(&mut self, ctx: &dyn AuthContext) -> Result<(UserRef, [u8; 16]), WireError> {
        let id: [u8; 16] = self
            .buf
            .get(..AUTH_ID_LEN)
            .and_then(arr16)
            .ok_or(WireError::Malformed("vmess: short auth id"))?;
        let peer = ctx.peer_ip();
        let mut keys = self.keys.borrow_mut();
        keys.refresh(ctx);
        let found = keys
            .find(&id, peer)
            .ok_or(WireError::Auth("vmess: unknown auth id"))?;
        if found.timestamp.abs_diff(ctx.now_unix()) > MAX_SKEW_S {
            return Err(WireError::Timestamp);
        }
        let mut tagged = [0u8; 5 + AUTH_ID_LEN];
        tagged[..5].copy_from_slice(b"vmess");
        tagged[5..].copy_from_slice(&id);
        if !ctx.check_replay(&tagged) {
            return Err(WireError::Replay);
        }
        let u = keys.get(found.index).ok_or(WireError::Auth("vmess: user gone"))?;
        let r = (u.user, u.cmd_key);
        keys.hint(peer, found.index);
        Ok(r)
    }

    fn step(&mut self, ctx: &dyn AuthContext) -> Result<Step, WireError> {
        if self.user.is_none() {
            if self.buf.len() < AUTH_ID_LEN {
                return Ok(Step::NeedMore(AUTH_ID_LEN - self.buf.len()));
            }
            self.user = Some(self.match_auth_id(ctx)?);
        }
        let Some((user, cmd_key)) = self.user else {
            return Err(WireError::Auth("vmess: no user"));
        };
        let Some(prefix) = self.buf.get(..PREFIX_LEN) else {
            return Ok(Step::NeedMore(PREFIX_LEN - self.buf.len()));
        };
        let auth_id = prefix.get(..AUTH_ID_LEN).unwrap_or_default();
        let nonce = prefix.get(PREFIX_LEN - 8..).unwrap_or_default();
        let mut len_sealed = [0u8; 2 + TAG_LEN];
        len_sealed.copy_from_slice(
            prefix
                .get(AUTH_ID_LEN..AUTH_ID_LEN + 2 + TAG_LEN)
                .unwrap_or_default(),
        );
        let (aead, n) = header_aead(&cmd_key, auth_id, nonce, HEADER_LEN_KEY, HEADER_LEN_IV)?;
        aead.open_in_place(n, auth_id, &mut len_sealed)?;
        let hlen = usize::from(u16::from_be_bytes([len_sealed[0], len_sealed[1]]));
        if hlen > MAX_HEADER {
            return Err(WireError::Malformed("vmess: header too long"));
        }
        let end = PREFIX_LEN + hlen + TAG_LEN;
        if self.buf.len() < end {
            return Ok(Step::NeedMore(end - self.buf.len()));
        }
        let mut sealed = self.buf.get(PREFIX_LEN..end).unwrap_or_default().to_vec();
        let (aead, n) = header_aead(&cmd_key, auth_id, nonce, HEADER_KEY, HEADER_IV)?;
        let plen = aead.open_in_place(n, auth_id, &mut sealed)?;
        let req = parse_header(sealed.get(..plen).unwrap_or_default())?;
        // `None`: command 3, Mux.Cool (the frames carry the destinations).
        let (dest, udp) = match (req.cmd, req.dest) {
            (CMD_TCP, Some(d)) => (Some(d), false),
            (CMD_UDP, Some(d)) => (Some(d), true),
            #[cfg(feature = "vless")]
            (CMD_MUX, None) => (None, true),
            _ => return Err(WireError::Unsupported("vmess: mux not served")),
        };
        let chunked = req.options & OPT_CHUNK_STREAM != 0;
        let security = match req.security {
            SEC_AES128_GCM => Security::Aead(AeadKind::Aes128Gcm),
            SEC_CHACHA20_POLY1305 => Security::Aead(AeadKind::ChaCha20Poly1305),
            SEC_NONE | SEC_ZERO => Security::None,
            _ => return Err(WireError::Unsupported("vmess: security type")),
        };
        if matches!(security, Security::Aead(_)) && !chunked {
            return Err(WireError::Malformed("vmess: AEAD security without chunk stream"));
        }
        let response_key = sha256_16(&req.key);
        let response_iv = sha256_16(&req.iv);
        let reply = response_header(req.v, &response_key, &response_iv)?;
        let rest = self.buf.get(end..).unwrap_or_default();
        if udp {
            if !chunked {
                return Err(WireError::Unsupported("vmess: UDP without chunk stream"));
            }
            let p = BodyParams {
                security,
                options: req.options,
                request_key: req.key,
                request_iv: req.iv,
            };
            let reader = ChunkReader::new(&p, &req.key, &req.iv)?;
            let writer = ChunkWriter::new(&p, &response_key, &response_iv)?;
            let codec: Box<dyn crate::DatagramStreamCodec> = match dest {
                Some(d) => Box::new(udp::VmessUdp::new(d, reader, writer)),
                #[cfg(feature = "vless")]
                None => Box::new(mux::VmessMux::new(reader, writer)),
                #[cfg(not(feature = "vless"))]
                None => return Err(WireError::Unsupported("vmess: mux not served")),
            };
            let initial = rest.to_vec();
            self.buf = Vec::new();
            return Ok(Step::Done(Next::UdpOverStream {
                user,
                reply,
                initial,
                codec,
                framing: None,
            }));
        }
        let Some(dest) = dest else {
            return Err(WireError::Unsupported("vmess: mux not served"));
        };
        let mut initial_upload = Vec::new();
        let codec: Option<Box<dyn StreamCodec>> = if chunked {
            let p = BodyParams {
                security,
                options: req.options,
                request_key: req.key,
                request_iv: req.iv,
            };
            let mut c = ServerBody::new(&p, &response_key, &response_iv)?;
            c.open_first(rest, &mut initial_upload)?;
            Some(Box::new(c))
        } else {
            initial_upload = rest.to_vec();
            None
        };
        self.buf = Vec::new();
        Ok(Step::Done(Next::Forward {
            dest,
            user,
            initial_upload,
            reply,
            codec,
        }))
    }
}

impl StreamHandshake for VmessHandshake {
    fn feed(&mut self, data: &[u8], ctx: &dyn AuthContext) -> Result<Step, WireError> {
        if self.finished {
            return Ok(reject(WireError::Malformed(
                "vmess: bytes after a finished handshake",
            )));
        }
        self.buf.extend_from_slice(data);
        match self.step(ctx) {
            Ok(Step::NeedMore(n)) => Ok(Step::NeedMore(n)),
            Ok(done) => {
                self.finished = true;
                Ok(done)
            }
            Err(e) => {
                self.finished = true;
                let extra = self.buf.len().saturating_sub(16);
                self.buf = Vec::new();
                Ok(reject_after(e, extra))
            }
        }
    }
}

#[cfg(test)]
mod tests;
