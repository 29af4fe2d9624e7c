//! Shadowsocks 2022 (SIP022, with SIP023 identity headers): 2022-blake3-aes-128-gcm,
//! 2022-blake3-aes-256-gcm, 2022-blake3-chacha20-poly1305.
//!
//! ```text
//! session_subkey  = blake3::derive_key("shadowsocks 2022 session subkey", PSK ‖ salt)[..key_len]
//! identity_subkey = blake3::derive_key("shadowsocks 2022 identity subkey", iPSK ‖ salt)[..key_len]
//! nonce (TCP)     = 12-byte little-endian counter from 0, +1 per chunk
//!
//! TCP request:
//! +--------+-------------+--------------------------+-------------------------------+------
//! | salt   | EIH (AES,   | fixed header chunk       | variable header chunk         | length/payload
//! | 16/32B | multi-user) | type=0 ‖ ts u64 ‖ len u16| ATYP addr port ‖ padlen u16 ‖ | chunks, ≤ 0xFFFF
//! |        | 16 B        | 11 B + 16 B tag          | padding ‖ initial payload +tag| each
//! +--------+-------------+--------------------------+-------------------------------+------
//! EIH = AES-ECB(identity_subkey, blake3(uPSK)[..16]);  uPSK then replaces PSK for the session.
//!
//! TCP response:
//! +--------+-------------------------------------------+-------------------+------
//! | salt   | type=1 ‖ ts u64 ‖ request salt ‖ len u16  | first payload     | length/payload ...
//! |        | 27/43 B + 16 B tag                        | len B + 16 B tag  |
//! +--------+-------------------------------------------+-------------------+------
//!
//! UDP (AES): AES-ECB(PSK, session id 8 B ‖ packet id u64 BE) ‖ [EIH] ‖ AEAD(body)
//!   body key = session_subkey(PSK, session id), nonce = separate_header[4..16]
//!   EIH = AES-ECB(iPSK, blake3(uPSK)[..16] ⊕ separate_header)  (client → server only)
//!   client body: type=0 ‖ ts ‖ padlen u16 ‖ padding ‖ ATYP addr port ‖ payload
//!   server body: type=1 ‖ ts ‖ client session id ‖ padlen u16 ‖ padding ‖ ATYP addr port ‖ payload
//! UDP (ChaCha): nonce 24 B ‖ XChaCha20-Poly1305(PSK, nonce)(session id ‖ packet id ‖ body as above)
//! ```
//!
//! Users. With a server PSK and an AES method, identity headers are required: the EIH decrypts
//! to blake3(uPSK)[..16], which is exactly the user table's lookup key (`cred::lookup_key`), so
//! finding the user is one hash lookup. SIP023 defines no EIH for ChaCha (sing-box and
//! shadowsocks-rust refuse multi-user ChaCha); there, and when no server PSK is configured,
//! each user's uPSK is tried on the fixed header (like AEAD-2017). A client using only the
//! server PSK has no user and is rejected. Server replies are keyed with the user's uPSK.

use std::time::Instant;

use v2sp_shared::cred::Secret;
use v2sp_shared::shm::UserRef;

use super::address;
use super::aead::{ChunkReader, ChunkWriter};
use super::cipher::{
    aes_decrypt_block, random_bytes, xchacha_open_in_place, xchacha_seal_append, AeadCipher, AeadKind,
    AesBlock, ChunkCipher, TAG_LEN,
};
use super::{reject, settle};
use crate::{
    AuthContext, Destination, InboundPacket, Next, PacketCodec, PacketSession, SealLayout, Step, StreamCodec,
    StreamHandshake, WireError,
};

pub const MAX_PAYLOAD: usize = 0xFFFF;
pub const MAX_PADDING: usize = 900;
/// Timestamps more than this far from our clock are replays (SIP022 §3.1.3).
pub const MAX_TIME_DIFF_S: u64 = 30;
const TYPE_CLIENT: u8 = 0;
const TYPE_SERVER: u8 = 1;
const FIXED_HEADER_LEN: usize = 1 + 8 + 2;
const MAX_HANDSHAKE_BUFFER: usize = 32 + 16 + FIXED_HEADER_LEN + 2 * TAG_LEN + MAX_PAYLOAD;
const SESSION_CTX: &str = "shadowsocks 2022 session subkey";
const IDENTITY_CTX: &str = "shadowsocks 2022 identity subkey";

fn derive(ctx: &str, key: &[u8], salt: &[u8], out_len: usize) -> Secret {
    let mut h = blake3::Hasher::new_derive_key(ctx);
    h.update(key);
    h.update(salt);
    let k = h.finalize();
    Secret::from_slice(&k.as_bytes()[..out_len.min(32)])
}

/// `blake3::derive_key("shadowsocks 2022 session subkey", key ‖ salt)[..key_len]`.
pub fn session_subkey(kind: AeadKind, key: &[u8], salt: &[u8]) -> Secret {
    derive(SESSION_CTX, key, salt, kind.key_len())
}

/// `blake3::derive_key("shadowsocks 2022 identity subkey", ipsk ‖ salt)[..key_len]`.
pub fn identity_subkey(kind: AeadKind, ipsk: &[u8], salt: &[u8]) -> Secret {
    derive(IDENTITY_CTX, ipsk, salt, kind.key_len())
}

/// The 16-byte user identity hash (= `cred::lookup_key` for SS-2022 secrets).
pub fn psk_hash(psk: &[u8]) -> [u8; 16] {
    let mut o = [0u8; 16];
    o.copy_from_slice(&blake3::hash(psk).as_bytes()[..16]);
    o
}

fn session_cipher(kind: AeadKind, key: &[u8], salt: &[u8]) -> Result<AeadCipher, WireError> {
    AeadCipher::new(kind, session_subkey(kind, key, salt).as_slice())
}

fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at + 8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_be_bytes(a))
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Node-level SS-2022 settings.
#[derive(Clone, Copy, Debug)]
pub struct Ss2022Config {
    pub kind: AeadKind,
    /// Server PSK (panel `server_key`, base64-decoded), `kind.key_len()` bytes, if any.
    pub server_psk: Option<Secret>,
}

impl Ss2022Config {
    pub fn new(kind: AeadKind, server_psk: Option<&[u8]>) -> Result<Self, WireError> {
        let server_psk = match server_psk {
            Some(p) if !p.is_empty() => {
                if p.len() != kind.key_len() {
                    return Err(WireError::Unsupported(
                        "server PSK length does not match the method",
                    ));
                }
                Some(Secret::from_slice(p))
            }
            _ => None,
        };
        Ok(Ss2022Config { kind, server_psk })
    }

    /// Identity headers are in use (AES method and a server PSK).
    pub fn uses_eih(&self) -> bool {
        self.server_psk.is_some() && self.kind != AeadKind::ChaCha20Poly1305
    }
}

fn check_time(ts: u64, now: u64) -> Result<(), WireError> {
    if ts.abs_diff(now) > MAX_TIME_DIFF_S {
        return Err(WireError::Timestamp);
    }
    Ok(())
}

enum State {
    Fixed,
    Variable {
        user: UserRef,
        cipher: ChunkCipher,
        var_len: usize,
        consumed: usize,
    },
    Finished,
}

/// Server-side SS-2022 TCP handshake.
pub struct Ss2022Handshake {
    cfg: Ss2022Config,
    buf: Vec<u8>,
    state: State,
}

impl Ss2022Handshake {
    pub fn new(cfg: Ss2022Config) -> Self {
        Ss2022Handshake {
            cfg,
            buf: Vec::new(),
            state: State::Fixed,
        }
    }

    /// Find the user and open the fixed header; returns (user, cipher after it, var_len).
    fn open_fixed(&self, ctx: &dyn AuthContext) -> Result<(UserRef, ChunkCipher, usize, usize), WireError> {
        let kind = self.cfg.kind;
        let salt_len = kind.key_len();
        let eih_len = if self.cfg.uses_eih() { 16 } else { 0 };
        let salt = self
            .buf
            .get(..salt_len)
            .ok_or(WireError::Malformed("short salt"))?;
        let hdr_at = salt_len + eih_len;
        let hdr = self
            .buf
            .get(hdr_at..hdr_at + FIXED_HEADER_LEN + TAG_LEN)
            .ok_or(WireError::Malformed("short header"))?;
        let mut fixed = [0u8; FIXED_HEADER_LEN + TAG_LEN];
        let found = match self.cfg.server_psk.filter(|_| eih_len > 0) {
            Some(ipsk) => {
                let mut block = [0u8; 16];
                block.copy_from_slice(
                    self.buf
                        .get(salt_len..salt_len + 16)
                        .ok_or(WireError::Malformed("short EIH"))?,
                );
                aes_decrypt_block(
                    identity_subkey(kind, ipsk.as_slice(), salt).as_slice(),
                    &mut block,
                )?;
                let user = ctx
                    .lookup(&block)
                    .ok_or(WireError::Auth("identity header names no user"))?;
                if user.secret().len() != salt_len {
                    return Err(WireError::Auth("user PSK length does not match the method"));
                }
                fixed.copy_from_slice(hdr);
                let c = session_cipher(kind, user.secret(), salt)?;
                c.open_in_place([0; 12], &mut fixed)
                    .map_err(|_| WireError::Auth("header does not open with the user's key"))?;
                (user, c)
            }
            None => {
                let mut found = None;
                ctx.for_each_user(&mut |u: &UserRef| {
                    if u.secret().len() != salt_len {
                        return true;
                    }
                    let Ok(c) = session_cipher(kind, u.secret(), salt) else {
                        return true;
                    };
                    fixed.copy_from_slice(hdr);
                    if c.open_in_place([0; 12], &mut fixed).is_ok() {
                        found = Some((*u, c));
                        return false;
                    }
                    true
                });
                found.ok_or(WireError::Auth("no user's key opens the header"))?
            }
        };
        let (user, c) = found;
        if fixed[0] != TYPE_CLIENT {
            return Err(WireError::Malformed("request header type is not client stream"));
        }
        check_time(be_u64(&fixed, 1).unwrap_or(0), ctx.now_unix())?;
        let var_len = usize::from(be_u16(&fixed, 9).unwrap_or(0));
        if var_len == 0 {
            return Err(WireError::Malformed("empty variable-length header"));
        }
        if !ctx.check_replay(salt) {
            return Err(WireError::Replay);
        }
        let mut cipher = ChunkCipher::new(c);
        cipher.skip_one();
        Ok((user, cipher, var_len, hdr_at + FIXED_HEADER_LEN + TAG_LEN))
    }

    fn step(&mut self, ctx: &dyn AuthContext) -> Result<Step, WireError> {
        if let State::Fixed = self.state {
            let need = self.cfg.kind.key_len()
                + if self.cfg.uses_eih() { 16 } else { 0 }
                + FIXED_HEADER_LEN
                + TAG_LEN;
            if self.buf.len() < need {
                return Ok(Step::NeedMore(need - self.buf.len()));
            }
            let (user, cipher, var_len, consumed) = self.open_fixed(ctx)?;
            self.state = State::Variable {
                user,
                cipher,
                var_len,
                consumed,
            };
        }
        let State::Variable {
            var_len, consumed, ..
        } = &self.state
        else {
            return Err(WireError::Malformed("handshake already finished"));
        };
        let (var_len, consumed) = (*var_len, *consumed);
        let end = consumed + var_len + TAG_LEN;
        if self.buf.len() < end {
            return Ok(Step::NeedMore(end - self.buf.len()));
        }
        let State::Variable { user, mut cipher, .. } = std::mem::replace(&mut self.state, State::Finished)
        else {
            return Err(WireError::Malformed("handshake state"));
        };
        let mut var = self
            .buf
            .get(consumed..end)
            .ok_or(WireError::Malformed("short header"))?
            .to_vec();
        let n = cipher.open_chunk(&mut var)?;
        var.truncate(n);
        let (dest, used) = address::parse_complete(&var)?;
        let pad_len = usize::from(be_u16(&var, used).ok_or(WireError::Malformed("no padding length"))?);
        if pad_len > MAX_PADDING {
            return Err(WireError::Malformed("padding longer than 900 bytes"));
        }
        let payload_at = used + 2 + pad_len;
        if payload_at > var.len() {
            return Err(WireError::Malformed("padding extends beyond the header chunk"));
        }
        let mut initial_upload = var.split_off(payload_at);
        if initial_upload.is_empty() && pad_len == 0 {
            return Err(WireError::Malformed(
                "request without payload and without padding",
            ));
        }
        let kind = self.cfg.kind;
        let salt = Secret::from_slice(self.buf.get(..kind.key_len()).unwrap_or_default());
        let mut carry = self.buf.split_off(end);
        self.buf = Vec::new();
        // Whole chunks that arrived with the header (a client that sends the header with
        // padding only, then the payload, often lands both in one read) are decoded now: the
        // relay opens the codec only when the client sends more, and a client waiting for the
        // answer to that payload would wait forever (issue 17: connections stalled in bursts).
        let mut reader = ChunkReader::new(cipher, None, MAX_PAYLOAD);
        let used = reader.open(&carry, &mut initial_upload)?;
        carry.drain(..used.min(carry.len()));
        let codec = Ss2022Codec {
            reader,
            carry,
            kind,
            user_psk: Secret::from_slice(user.secret()),
            request_salt: salt,
            writer: None,
            clock: (ctx.now_unix(), Instant::now()),
        };
        Ok(Step::Done(Next::Forward {
            dest,
            user,
            initial_upload,
            reply: Vec::new(),
            codec: Some(Box::new(codec)),
        }))
    }
}

impl StreamHandshake for Ss2022Handshake {
    fn feed(&mut self, data: &[u8], ctx: &dyn AuthContext) -> Result<Step, WireError> {
        if matches!(self.state, State::Finished) {
            return Ok(reject(WireError::Malformed("data after a finished handshake")));
        }
        self.buf.extend_from_slice(data);
        let (step, finished) = settle(self.step(ctx), self.buf.len(), MAX_HANDSHAKE_BUFFER);
        if finished {
            self.state = State::Finished;
        }
        Ok(step)
    }
}

/// Stream codec after an SS-2022 handshake. The response header goes out with the first
/// sealed payload (SIP022: "the header is always sent along with payload").
pub struct Ss2022Codec {
    reader: ChunkReader,
    carry: Vec<u8>,
    kind: AeadKind,
    user_psk: Secret,
    request_salt: Secret,
    writer: Option<ChunkWriter>,
    /// The handshake's clock reading and when it was taken, so the response timestamp follows
    /// the same (possibly injected) clock.
    clock: (u64, Instant),
}

impl StreamCodec for Ss2022Codec {
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        if self.carry.is_empty() {
            return self.reader.open(wire, out);
        }
        self.carry.extend_from_slice(wire);
        let n = self.reader.open(&self.carry, out)?;
        self.carry.drain(..n);
        Ok(wire.len())
    }

    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if plain.is_empty() {
            return Ok(());
        }
        if let Some(w) = self.writer.as_mut() {
            return w.seal(plain, out);
        }
        let salt_len = self.kind.key_len();
        let mut salt = [0u8; 32];
        random_bytes(&mut salt[..salt_len])?;
        let mut c = ChunkCipher::new(session_cipher(
            self.kind,
            self.user_psk.as_slice(),
            &salt[..salt_len],
        )?);
        out.extend_from_slice(&salt[..salt_len]);
        let (first, rest) = plain.split_at(plain.len().min(MAX_PAYLOAD));
        let now = self.clock.0 + self.clock.1.elapsed().as_secs();
        let mut hdr = Vec::with_capacity(1 + 8 + 32 + 2);
        hdr.push(TYPE_SERVER);
        hdr.extend_from_slice(&now.to_be_bytes());
        hdr.extend_from_slice(self.request_salt.as_slice());
        hdr.extend_from_slice(&(first.len() as u16).to_be_bytes());
        c.seal_chunk(&hdr, out)?;
        c.seal_chunk(first, out)?;
        let mut w = ChunkWriter::new(c, MAX_PAYLOAD);
        w.seal(rest, out)?;
        self.writer = Some(w);
        Ok(())
    }

    fn seal_layout(&self) -> Option<SealLayout> {
        self.writer.as_ref().map(ChunkWriter::layout)
    }

    fn seal_in_place(&mut self, buf: &mut [u8], n: usize, l: SealLayout) -> Result<usize, WireError> {
        self.writer
            .as_mut()
            .ok_or(WireError::Unsupported(
                "in-place sealing before the response header",
            ))?
            .seal_in_place(buf, n, l)
    }
}

// ---------------------------------------------------------------------------------------------
// UDP

/// Sliding-window packet-id filter (WireGuard style): accepts each id once, rejects ids more
/// than `WINDOW` behind the highest seen.
#[derive(Clone, Debug)]
pub struct PacketWindow {
    highest: Option<u64>,
    bits: [u64; WINDOW_WORDS],
}

const WINDOW_WORDS: usize = 16;
/// Packets further behind the newest one are dropped.
pub const WINDOW: u64 = (WINDOW_WORDS * 64) as u64;

impl Default for PacketWindow {
    fn default() -> Self {
        PacketWindow {
            highest: None,
            bits: [0; WINDOW_WORDS],
        }
    }
}

impl PacketWindow {
    fn bit(id: u64) -> (usize, u64) {
        let i = (id % WINDOW) as usize;
        (i / 64, 1u64 << (i % 64))
    }

    fn set(&mut self, id: u64) {
        let (w, m) = Self::bit(id);
        if let Some(word) = self.bits.get_mut(w) {
            *word |= m;
        }
    }

    fn is_set(&self, id: u64) -> bool {
        let (w, m) = Self::bit(id);
        self.bits.get(w).is_some_and(|word| word & m != 0)
    }

    /// True if `id` is new and inside the window (and records it).
    pub fn accept(&mut self, id: u64) -> bool {
        let Some(high) = self.highest else {
            self.highest = Some(id);
            self.set(id);
            return true;
        };
        if id > high {
            if id - high >= WINDOW {
                self.bits = [0; WINDOW_WORDS];
            } else {
                for j in high + 1..=id {
                    let (w, m) = Self::bit(j);
                    if let Some(word) = self.bits.get_mut(w) {
                        *word &= !m;
                    }
                }
            }
            self.highest = Some(id);
            self.set(id);
            return true;
        }
        if high - id >= WINDOW || self.is_set(id) {
            return false;
        }
        self.set(id);
        true
    }
}

/// SS-2022 UDP codec.
pub struct Ss2022Udp {
    cfg: Ss2022Config,
    /// AES block cipher of the server PSK (separate header and EIH), when EIH is in use.
    server_block: Option<AesBlock>,
}

/// Bytes of the client body header before padding: type, timestamp, padding length.
const UDP_CLIENT_HDR: usize = 1 + 8 + 2;

impl Ss2022Udp {
    pub fn new(cfg: Ss2022Config) -> Result<Self, WireError> {
        let server_block = match cfg.server_psk.filter(|_| cfg.uses_eih()) {
            Some(p) => Some(AesBlock::new(p.as_slice())?),
            None => None,
        };
        Ok(Ss2022Udp { cfg, server_block })
    }

    /// Parse the body main header (after the AEAD open).
    fn parse_body(body: &[u8], now: u64) -> Result<(Destination, usize), WireError> {
        if body.first() != Some(&TYPE_CLIENT) {
            return Err(WireError::Malformed("packet header type is not client"));
        }
        check_time(
            be_u64(body, 1).ok_or(WireError::Malformed("short packet header"))?,
            now,
        )?;
        let pad = usize::from(be_u16(body, 9).ok_or(WireError::Malformed("short packet header"))?);
        if pad > MAX_PADDING {
            return Err(WireError::Malformed("padding longer than 900 bytes"));
        }
        let addr_at = UDP_CLIENT_HDR + pad;
        let (dest, used) = address::parse_complete(
            body.get(addr_at..)
                .ok_or(WireError::Malformed("padding past end"))?,
        )?;
        Ok((dest, addr_at + used))
    }

    fn open_aes(
        &self,
        pkt: &mut [u8],
        hint: Option<&UserRef>,
        ctx: &dyn AuthContext,
    ) -> Result<InboundPacket, WireError> {
        let kind = self.cfg.kind;
        let eih_len = if self.server_block.is_some() { 16 } else { 0 };
        let body_at = 16 + eih_len;
        if pkt.len() < body_at + TAG_LEN + UDP_CLIENT_HDR {
            return Err(WireError::Malformed("datagram too short"));
        }
        let (head, body) = pkt.split_at_mut(body_at);
        let mut sep = [0u8; 16];
        sep.copy_from_slice(head.get(..16).ok_or(WireError::Malformed("short"))?);
        let (user, plain_len) = match &self.server_block {
            Some(block) => {
                block.decrypt(&mut sep)?;
                let mut id = [0u8; 16];
                id.copy_from_slice(head.get(16..32).ok_or(WireError::Malformed("short EIH"))?);
                block.decrypt(&mut id)?;
                for (a, b) in id.iter_mut().zip(sep.iter()) {
                    *a ^= b;
                }
                let user = ctx
                    .lookup(&id)
                    .ok_or(WireError::Auth("identity header names no user"))?;
                let c = session_cipher(kind, user.secret(), &sep[..8])?;
                let nonce: [u8; 12] = sep[4..].try_into().map_err(|_| WireError::Malformed("nonce"))?;
                let n = c
                    .open_in_place(nonce, body)
                    .map_err(|_| WireError::Auth("body does not open with the user's key"))?;
                (user, n)
            }
            None => {
                // Each user's PSK encrypts the separate header too: try them all.
                let original = body.to_vec();
                let mut first = true;
                let mut found = None;
                let mut attempt = |u: &UserRef| -> bool {
                    let Ok(block) = AesBlock::new(u.secret()) else {
                        return true;
                    };
                    if u.secret().len() != kind.key_len() {
                        return true;
                    }
                    let mut s = [0u8; 16];
                    s.copy_from_slice(&head[..16]);
                    if block.decrypt(&mut s).is_err() {
                        return true;
                    }
                    let Ok(c) = session_cipher(kind, u.secret(), &s[..8]) else {
                        return true;
                    };
                    if !first {
                        body.copy_from_slice(&original);
                    }
                    first = false;
                    let mut nonce = [0u8; 12];
                    nonce.copy_from_slice(&s[4..]);
                    if let Ok(n) = c.open_in_place(nonce, body) {
                        found = Some((*u, n, s));
                        return false;
                    }
                    true
                };
                // `attempt` answers false once it found the user.
                let found_by_hint = hint.is_some_and(|h| !attempt(h));
                if !found_by_hint {
                    ctx.for_each_user(&mut attempt);
                }
                let (u, n, s) = found.ok_or(WireError::Auth("no user's key opens the datagram"))?;
                sep = s;
                (u, n)
            }
        };
        let plain = pkt
            .get(body_at..body_at + plain_len)
            .ok_or(WireError::Malformed("body"))?;
        let (dest, used) = Self::parse_body(plain, ctx.now_unix())?;
        Ok(InboundPacket {
            user,
            session_id: be_u64(&sep, 0).unwrap_or(0),
            packet_id: be_u64(&sep, 8).unwrap_or(0),
            dest,
            payload: body_at + used..body_at + plain_len,
        })
    }

    fn open_chacha(
        &self,
        pkt: &mut [u8],
        hint: Option<&UserRef>,
        ctx: &dyn AuthContext,
    ) -> Result<InboundPacket, WireError> {
        if pkt.len() < 24 + 16 + UDP_CLIENT_HDR + TAG_LEN {
            return Err(WireError::Malformed("datagram too short"));
        }
        let (n24, body) = pkt.split_at_mut(24);
        let nonce: [u8; 24] = (&*n24).try_into().map_err(|_| WireError::Malformed("nonce"))?;
        let original = body.to_vec();
        let mut first = true;
        let mut found = None;
        let mut attempt = |u: &UserRef| -> bool {
            let Ok(key) = <[u8; 32]>::try_from(u.secret()) else {
                return true;
            };
            if !first {
                body.copy_from_slice(&original);
            }
            first = false;
            if let Ok(n) = xchacha_open_in_place(&key, &nonce, body) {
                found = Some((*u, n));
                return false;
            }
            true
        };
        // `attempt` answers false once it found the user.
        let found_by_hint = hint.is_some_and(|h| !attempt(h));
        if !found_by_hint {
            ctx.for_each_user(&mut attempt);
        }
        let (user, plain_len) = found.ok_or(WireError::Auth("no user's key opens the datagram"))?;
        let plain = pkt.get(24..24 + plain_len).ok_or(WireError::Malformed("body"))?;
        let session_id = be_u64(plain, 0).ok_or(WireError::Malformed("short"))?;
        let packet_id = be_u64(plain, 8).ok_or(WireError::Malformed("short"))?;
        let (dest, used) = Self::parse_body(plain.get(16..).unwrap_or_default(), ctx.now_unix())?;
        Ok(InboundPacket {
            user,
            session_id,
            packet_id,
            dest,
            payload: 24 + 16 + used..24 + plain_len,
        })
    }
}

impl PacketCodec for Ss2022Udp {
    fn open_packet(
        &self,
        pkt: &mut [u8],
        hint: Option<&UserRef>,
        ctx: &dyn AuthContext,
    ) -> Result<InboundPacket, WireError> {
        match self.cfg.kind {
            AeadKind::ChaCha20Poly1305 => self.open_chacha(pkt, hint, ctx),
            _ => self.open_aes(pkt, hint, ctx),
        }
    }

    fn new_session(&self, first: &InboundPacket) -> Result<Box<dyn PacketSession>, WireError> {
        let mut sid = [0u8; 8];
        random_bytes(&mut sid)?;
        let psk = Secret::from_slice(first.user.secret());
        let aes = match self.cfg.kind {
            AeadKind::ChaCha20Poly1305 => None,
            kind => Some((
                AesBlock::new(psk.as_slice())?,
                session_cipher(kind, psk.as_slice(), &sid)?,
            )),
        };
        // The first packet goes through `accept` like any other; nothing is recorded yet.
        let window = PacketWindow::default();
        Ok(Box::new(Ss2022UdpSession {
            psk,
            client_session_id: first.session_id,
            server_session_id: sid,
            next_packet_id: 0,
            window,
            aes,
        }))
    }
}

/// Per-session SS-2022 UDP state: the reply keys, our session id and packet counter, and the
/// client's packet-id window.
pub struct Ss2022UdpSession {
    psk: Secret,
    client_session_id: u64,
    server_session_id: [u8; 8],
    next_packet_id: u64,
    window: PacketWindow,
    aes: Option<(AesBlock, AeadCipher)>,
}

impl PacketSession for Ss2022UdpSession {
    fn accept(&mut self, pkt: &InboundPacket) -> bool {
        pkt.session_id == self.client_session_id && self.window.accept(pkt.packet_id)
    }

    fn seal(&mut self, from: &Destination, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let pid = self.next_packet_id;
        self.next_packet_id = pid.wrapping_add(1);
        let mut sep = [0u8; 16];
        sep[..8].copy_from_slice(&self.server_session_id);
        sep[8..].copy_from_slice(&pid.to_be_bytes());
        let mut body_hdr = Vec::with_capacity(1 + 8 + 8 + 2);
        body_hdr.push(TYPE_SERVER);
        body_hdr.extend_from_slice(&system_now().to_be_bytes());
        body_hdr.extend_from_slice(&self.client_session_id.to_be_bytes());
        body_hdr.extend_from_slice(&0u16.to_be_bytes());
        match &self.aes {
            Some((block, cipher)) => {
                let mut enc = sep;
                block.encrypt(&mut enc)?;
                out.extend_from_slice(&enc);
                let start = out.len();
                out.extend_from_slice(&body_hdr);
                address::write(from, out)?;
                out.extend_from_slice(payload);
                let mut nonce = [0u8; 12];
                nonce.copy_from_slice(&sep[4..]);
                cipher.seal_append(nonce, out, start)
            }
            None => {
                let key: [u8; 32] = self
                    .psk
                    .as_slice()
                    .try_into()
                    .map_err(|_| WireError::Unsupported("ChaCha PSK must be 32 bytes"))?;
                let mut nonce = [0u8; 24];
                random_bytes(&mut nonce)?;
                out.extend_from_slice(&nonce);
                let start = out.len();
                out.extend_from_slice(&sep);
                out.extend_from_slice(&body_hdr);
                address::write(from, out)?;
                out.extend_from_slice(payload);
                xchacha_seal_append(&key, &nonce, out, start)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client side (tests, benches, fuzzing): the mirror image of the server codecs above.

/// A client request/response stream. `ipsk` set → one identity header (AES only).
pub struct Ss2022Client {
    kind: AeadKind,
    upsk: Secret,
    salt: Secret,
    pending_header: Option<Vec<u8>>,
    writer: ChunkWriter,
    reader: Option<ChunkReader>,
    inbuf: Vec<u8>,
    /// Response header fields seen: (timestamp, request salt matched).
    pub response_checked: Option<(u64, bool)>,
}

impl Ss2022Client {
    /// Build the request head (salt, EIH, fixed + variable header with `initial` payload) and
    /// a writer for the rest. `padding` bytes of zero padding are added.
    pub fn new(
        kind: AeadKind,
        ipsk: Option<&[u8]>,
        upsk: &[u8],
        dest: &Destination,
        initial: &[u8],
        padding: usize,
        now: u64,
    ) -> Result<Self, WireError> {
        let n = kind.key_len();
        let mut salt = [0u8; 32];
        random_bytes(&mut salt[..n])?;
        let salt = &salt[..n];
        let mut head = salt.to_vec();
        if let Some(ipsk) = ipsk {
            let mut block = psk_hash(upsk);
            super::cipher::aes_encrypt_block(identity_subkey(kind, ipsk, salt).as_slice(), &mut block)?;
            head.extend_from_slice(&block);
        }
        let mut var = Vec::new();
        address::write(dest, &mut var)?;
        var.extend_from_slice(&(padding as u16).to_be_bytes());
        var.resize(var.len() + padding, 0);
        var.extend_from_slice(initial);
        let mut c = ChunkCipher::new(session_cipher(kind, upsk, salt)?);
        let mut fixed = vec![TYPE_CLIENT];
        fixed.extend_from_slice(&now.to_be_bytes());
        fixed.extend_from_slice(&(var.len() as u16).to_be_bytes());
        c.seal_chunk(&fixed, &mut head)?;
        c.seal_chunk(&var, &mut head)?;
        Ok(Ss2022Client {
            kind,
            upsk: Secret::from_slice(upsk),
            salt: Secret::from_slice(salt),
            pending_header: Some(head),
            writer: ChunkWriter::new(c, MAX_PAYLOAD),
            reader: None,
            inbuf: Vec::new(),
            response_checked: None,
        })
    }

    /// Append the request head (first call) and `plain` as chunks.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if let Some(h) = self.pending_header.take() {
            out.extend_from_slice(&h);
        }
        self.writer.seal(plain, out)
    }

    /// Feed response wire bytes, appending plaintext.
    pub fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        self.inbuf.extend_from_slice(wire);
        if self.reader.is_none() {
            let n = self.kind.key_len();
            let hdr_len = 1 + 8 + n + 2;
            let Some(head) = self.inbuf.get(..n + hdr_len + TAG_LEN) else {
                return Ok(());
            };
            let mut c = ChunkCipher::new(session_cipher(self.kind, self.upsk.as_slice(), &head[..n])?);
            let mut h = head[n..].to_vec();
            c.open_chunk(&mut h)?;
            if h.first() != Some(&TYPE_SERVER) {
                return Err(WireError::Malformed("response type"));
            }
            let ts = be_u64(&h, 1).unwrap_or(0);
            let salt_ok = h.get(9..9 + n) == Some(self.salt.as_slice());
            self.response_checked = Some((ts, salt_ok));
            let len = usize::from(be_u16(&h, 9 + n).unwrap_or(0));
            self.reader = Some(ChunkReader::new(c, Some(len), MAX_PAYLOAD));
            self.inbuf.drain(..n + hdr_len + TAG_LEN);
        }
        if let Some(r) = self.reader.as_mut() {
            let used = r.open(&self.inbuf, out)?;
            self.inbuf.drain(..used);
        }
        Ok(())
    }
}

impl crate::UpstreamCodec for Ss2022Client {
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        Ss2022Client::seal(self, plain, out)
    }
    /// As [`Ss2022Client::open`], and a response that does not echo our request salt is an
    /// error (a replayed or foreign response stream).
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        Ss2022Client::open(self, wire, out)?;
        match self.response_checked {
            Some((_, false)) => Err(WireError::Malformed("response salt")),
            _ => Ok(()),
        }
    }
}

/// Build one client→server SS-2022 datagram (tests).
#[allow(clippy::too_many_arguments)]
pub fn client_packet(
    kind: AeadKind,
    ipsk: Option<&[u8]>,
    upsk: &[u8],
    session_id: u64,
    packet_id: u64,
    now: u64,
    dest: &Destination,
    payload: &[u8],
) -> Result<Vec<u8>, WireError> {
    let mut body = vec![TYPE_CLIENT];
    body.extend_from_slice(&now.to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    address::write(dest, &mut body)?;
    body.extend_from_slice(payload);
    let mut sep = [0u8; 16];
    sep[..8].copy_from_slice(&session_id.to_be_bytes());
    sep[8..].copy_from_slice(&packet_id.to_be_bytes());
    let mut out = Vec::new();
    if kind == AeadKind::ChaCha20Poly1305 {
        let key: [u8; 32] = upsk
            .try_into()
            .map_err(|_| WireError::Unsupported("ChaCha PSK must be 32 bytes"))?;
        let mut nonce = [0u8; 24];
        random_bytes(&mut nonce)?;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sep);
        out.extend_from_slice(&body);
        xchacha_seal_append(&key, &nonce, &mut out, 24)?;
        return Ok(out);
    }
    let mut enc = sep;
    AesBlock::new(ipsk.unwrap_or(upsk))?.encrypt(&mut enc)?;
    out.extend_from_slice(&enc);
    if let Some(ipsk) = ipsk {
        let mut id = psk_hash(upsk);
        for (a, b) in id.iter_mut().zip(sep.iter()) {
            *a ^= b;
        }
        AesBlock::new(ipsk)?.encrypt(&mut id)?;
        out.extend_from_slice(&id);
    }
    let start = out.len();
    out.extend_from_slice(&body);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&sep[4..]);
    session_cipher(kind, upsk, &sep[..8])?.seal_append(nonce, &mut out, start)?;
    Ok(out)
}

/// Open a server→client SS-2022 datagram (tests): (client session id, from, payload).
pub fn client_open_reply(
    kind: AeadKind,
    upsk: &[u8],
    pkt: &mut [u8],
) -> Result<(u64, Destination, Vec<u8>), WireError> {
    let body: Vec<u8> = if kind == AeadKind::ChaCha20Poly1305 {
        let key: [u8; 32] = upsk
            .try_into()
            .map_err(|_| WireError::Unsupported("ChaCha PSK must be 32 bytes"))?;
        let nonce: [u8; 24] = pkt
            .get(..24)
            .ok_or(WireError::Malformed("short"))?
            .try_into()
            .map_err(|_| WireError::Malformed("n"))?;
        let rest = pkt.get_mut(24..).ok_or(WireError::Malformed("short"))?;
        let n = xchacha_open_in_place(&key, &nonce, rest)?;
        rest.get(16..n).ok_or(WireError::Malformed("short"))?.to_vec()
    } else {
        let mut sep: [u8; 16] = pkt
            .get(..16)
            .ok_or(WireError::Malformed("short"))?
            .try_into()
            .map_err(|_| WireError::Malformed("s"))?;
        AesBlock::new(upsk)?.decrypt(&mut sep)?;
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&sep[4..]);
        let rest = pkt.get_mut(16..).ok_or(WireError::Malformed("short"))?;
        let n = session_cipher(kind, upsk, &sep[..8])?.open_in_place(nonce, rest)?;
        rest.get(..n).ok_or(WireError::Malformed("short"))?.to_vec()
    };
    if body.first() != Some(&TYPE_SERVER) {
        return Err(WireError::Malformed("reply type"));
    }
    let csid = be_u64(&body, 9).ok_or(WireError::Malformed("short"))?;
    let pad = usize::from(be_u16(&body, 17).ok_or(WireError::Malformed("short"))?);
    let (dest, used) = address::parse_complete(body.get(19 + pad..).ok_or(WireError::Malformed("short"))?)?;
    Ok((
        csid,
        dest,
        body.get(19 + pad + used..).unwrap_or_default().to_vec(),
    ))
}
