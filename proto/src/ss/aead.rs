//! Shadowsocks AEAD (2017): aes-128-gcm, aes-256-gcm, chacha20-ietf-poly1305.
//!
//! ```text
//! key      = EVP_BytesToKey(password)            (the user table's secret, 16/32 B)
//! subkey   = HKDF-SHA1(key, salt, info = "ss-subkey"), key length
//! nonce    = 12-byte little-endian counter from 0, +1 after every chunk (length and payload)
//!
//! TCP stream (each direction, its own salt):
//! +--------+------------------------+-----------------------------+-----
//! | salt   | len: u16 BE ≤ 0x3FFF   | payload (len B)             | ...
//! | 16/32B | 2 B + 16 B tag         | len B + 16 B tag            |
//! +--------+------------------------+-----------------------------+-----
//! The request's first payload starts with the SOCKS address; clients may send it alone.
//!
//! UDP packet (nonce = 0, one AEAD seal per packet):
//! +--------+--------------------------------------------+
//! | salt   | ATYP address port ‖ payload  (+ 16 B tag)  |
//! +--------+--------------------------------------------+
//! ```
//!
//! No user id travels on the wire: the server tries each user's key on the first length chunk
//! (16+2 bytes); one HKDF-SHA1 and one AEAD key setup per candidate, stopping at the first
//! match. The HMAC state keyed by the salt (HKDF-Extract's key) is built once per connection
//! and cloned per candidate.

use hkdf::HkdfExtract;
use sha1::Sha1;
use v2sp_shared::cred::Secret;
use v2sp_shared::shm::UserRef;

use super::address::{self, Parsed};
use super::cipher::{random_bytes, AeadCipher, AeadKind, ChunkCipher, TAG_LEN};
use super::{reject, settle};
use crate::{
    AuthContext, Destination, InboundPacket, Next, PacketCodec, PacketSession, SealLayout, Step, StreamCodec,
    StreamHandshake, WireError,
};

/// Largest payload in one AEAD-2017 chunk (the top two length bits are reserved).
pub const MAX_PAYLOAD: usize = 0x3FFF;
/// The request's address must arrive within this much decoded plaintext.
const MAX_ADDRESS_PLAIN: usize = 512;
/// Bytes a handshake buffers before giving up (one full chunk plus slack).
const MAX_HANDSHAKE_BUFFER: usize = 64 + 2 * (MAX_PAYLOAD + 2 * TAG_LEN + 2);

/// Derive the session subkey, using a salt-keyed HKDF-Extract state prepared once.
fn subkey_from(extract: &HkdfExtract<Sha1>, key: &[u8], out: &mut [u8]) -> bool {
    let mut e = extract.clone();
    e.input_ikm(key);
    let (_, hk) = e.finalize();
    hk.expand(b"ss-subkey", out).is_ok()
}

/// HKDF-SHA1(key, salt, "ss-subkey") of `kind.key_len()` bytes.
pub fn session_subkey(kind: AeadKind, key: &[u8], salt: &[u8]) -> Result<Secret, WireError> {
    let mut out = [0u8; 32];
    let n = kind.key_len();
    let ok = subkey_from(&HkdfExtract::<Sha1>::new(Some(salt)), key, &mut out[..n]);
    if !ok {
        return Err(WireError::Unsupported("HKDF output length"));
    }
    Ok(Secret::from_slice(&out[..n]))
}

fn session_cipher(kind: AeadKind, key: &[u8], salt: &[u8]) -> Result<AeadCipher, WireError> {
    AeadCipher::new(kind, session_subkey(kind, key, salt)?.as_slice())
}

/// Reads length-chunk/payload-chunk pairs (shared with SS-2022, which allows 0xFFFF).
pub struct ChunkReader {
    cipher: ChunkCipher,
    pending_len: Option<usize>,
    max_len: usize,
}

impl ChunkReader {
    pub fn new(cipher: ChunkCipher, pending_len: Option<usize>, max_len: usize) -> Self {
        ChunkReader {
            cipher,
            pending_len,
            max_len,
        }
    }

    /// Open every complete chunk in `wire`, appending plaintext to `out`; returns the bytes
    /// consumed. On error `out` is left as it was.
    pub fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let out_start = out.len();
        let r = self.open_inner(wire, out);
        if r.is_err() {
            out.truncate(out_start);
        }
        r
    }

    fn open_inner(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let mut pos = 0;
        loop {
            match self.pending_len {
                None => {
                    let Some(chunk) = wire.get(pos..pos + 2 + TAG_LEN) else {
                        break;
                    };
                    let mut tmp = [0u8; 2 + TAG_LEN];
                    tmp.copy_from_slice(chunk);
                    self.cipher.open_chunk(&mut tmp)?;
                    let len = usize::from(u16::from_be_bytes([tmp[0], tmp[1]]));
                    if len > self.max_len {
                        return Err(WireError::Malformed("chunk length above the protocol maximum"));
                    }
                    pos += 2 + TAG_LEN;
                    self.pending_len = Some(len);
                }
                Some(len) => {
                    let Some(chunk) = wire.get(pos..pos + len + TAG_LEN) else {
                        break;
                    };
                    let start = out.len();
                    out.extend_from_slice(chunk);
                    let region = out.get_mut(start..).ok_or(WireError::Malformed("chunk"))?;
                    let n = self.cipher.open_chunk(region)?;
                    out.truncate(start + n);
                    pos += len + TAG_LEN;
                    self.pending_len = None;
                }
            }
        }
        Ok(pos)
    }
}

/// Writes length-chunk/payload-chunk pairs.
pub struct ChunkWriter {
    cipher: ChunkCipher,
    max_len: usize,
}

impl ChunkWriter {
    pub fn new(cipher: ChunkCipher, max_len: usize) -> Self {
        ChunkWriter {
            cipher,
            max_len: max_len.max(1),
        }
    }

    /// Chunk geometry for in-place sealing: sealed length (2 + tag), payload, tag.
    pub fn layout(&self) -> SealLayout {
        SealLayout {
            head: 2 + TAG_LEN,
            max: self.max_len,
            tail: TAG_LEN,
        }
    }

    /// Seals the `n` plaintext bytes a vectored read left in `buf`'s slots of `l` (from
    /// [`ChunkWriter::layout`]); returns the wire length at the front of `buf`.
    pub fn seal_in_place(&mut self, buf: &mut [u8], n: usize, l: SealLayout) -> Result<usize, WireError> {
        let (mut left, mut at, mut end) = (n, 0usize, 0usize);
        while left > 0 {
            let len = left.min(l.max).min(self.max_len);
            left -= len;
            let frame = buf
                .get_mut(at..at + 2 + 2 * TAG_LEN + len)
                .ok_or(WireError::Unsupported("in-place sealing: buffer too short"))?;
            let (head, body) = frame.split_at_mut(2 + TAG_LEN);
            let (len_field, len_tag) = head.split_at_mut(2);
            let len16 = u16::try_from(len).map_err(|_| WireError::Unsupported("chunk too long"))?;
            len_field.copy_from_slice(&len16.to_be_bytes());
            self.cipher.seal_chunk_in_place(len_field, len_tag)?;
            let (payload, tag) = body.split_at_mut(len);
            self.cipher.seal_chunk_in_place(payload, tag)?;
            end = at + 2 + 2 * TAG_LEN + len;
            at += l.stride();
        }
        Ok(end)
    }

    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        out.reserve(plain.len() + (plain.len() / self.max_len + 1) * (2 + 2 * TAG_LEN));
        for piece in plain.chunks(self.max_len) {
            let len = u16::try_from(piece.len()).map_err(|_| WireError::Unsupported("chunk too long"))?;
            self.cipher.seal_chunk(&len.to_be_bytes(), out)?;
            self.cipher.seal_chunk(piece, out)?;
        }
        Ok(())
    }
}

/// Stream codec after an AEAD-2017 handshake.
pub struct Aead2017Codec {
    reader: ChunkReader,
    /// Wire bytes the handshake received beyond its last complete chunk.
    carry: Vec<u8>,
    writer: ChunkWriter,
    /// Response salt, sent before the first sealed chunk.
    salt_to_send: Option<Secret>,
}

impl StreamCodec for Aead2017Codec {
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
        if let Some(salt) = self.salt_to_send.take() {
            out.extend_from_slice(salt.as_slice());
        }
        self.writer.seal(plain, out)
    }

    fn seal_layout(&self) -> Option<SealLayout> {
        self.salt_to_send.is_none().then(|| self.writer.layout())
    }

    fn seal_in_place(&mut self, buf: &mut [u8], n: usize, l: SealLayout) -> Result<usize, WireError> {
        if self.salt_to_send.is_some() {
            return Err(WireError::Unsupported("in-place sealing before the salt"));
        }
        self.writer.seal_in_place(buf, n, l)
    }
}

enum State {
    Salt,
    Address {
        user: UserRef,
        key: Secret,
        reader: ChunkReader,
        consumed: usize,
        plain: Vec<u8>,
    },
    Finished,
}

/// Server-side AEAD-2017 TCP handshake.
pub struct Aead2017Handshake {
    kind: AeadKind,
    buf: Vec<u8>,
    state: State,
}

/// Try each user's key on the first length chunk; stops at the first match.
/// Returns the user, its key and the opened reader (length already decoded).
fn find_user(
    kind: AeadKind,
    salt: &[u8],
    hint: Option<&UserRef>,
    ctx: &dyn AuthContext,
    try_open: &mut dyn FnMut(&AeadCipher) -> bool,
) -> Option<(UserRef, AeadCipher)> {
    let extract = HkdfExtract::<Sha1>::new(Some(salt));
    let n = kind.key_len();
    let mut found = None;
    let mut attempt = |u: &UserRef| -> bool {
        let secret = u.secret();
        if secret.len() != n {
            return true;
        }
        let mut sub = [0u8; 32];
        if !subkey_from(&extract, secret, &mut sub[..n]) {
            return true;
        }
        let Ok(c) = AeadCipher::new(kind, &sub[..n]) else {
            return true;
        };
        if try_open(&c) {
            found = Some((*u, c));
            return false;
        }
        true
    };
    // `attempt` answers false once it found the user.
    let found_by_hint = hint.is_some_and(|h| !attempt(h));
    if !found_by_hint {
        ctx.for_each_user(&mut attempt);
    }
    found
}

impl Aead2017Handshake {
    pub fn new(kind: AeadKind) -> Self {
        Aead2017Handshake {
            kind,
            buf: Vec::new(),
            state: State::Salt,
        }
    }

    fn step(&mut self, ctx: &dyn AuthContext) -> Result<Step, WireError> {
        let salt_len = self.kind.key_len();
        if let State::Salt = self.state {
            let need = salt_len + 2 + TAG_LEN;
            if self.buf.len() < need {
                return Ok(Step::NeedMore(need - self.buf.len()));
            }
            let (salt, rest) = self.buf.split_at(salt_len);
            let first = rest
                .get(..2 + TAG_LEN)
                .ok_or(WireError::Malformed("short first chunk"))?;
            let mut len_out = 0usize;
            let mut try_open = |c: &AeadCipher| {
                let mut tmp = [0u8; 2 + TAG_LEN];
                tmp.copy_from_slice(first);
                if c.open_in_place([0; 12], &mut tmp).is_ok() {
                    len_out = usize::from(u16::from_be_bytes([tmp[0], tmp[1]]));
                    true
                } else {
                    false
                }
            };
            let Some((user, cipher)) = find_user(self.kind, salt, None, ctx, &mut try_open) else {
                return Ok(reject(WireError::Auth("no user's key opens the first chunk")));
            };
            if len_out > MAX_PAYLOAD {
                return Ok(reject(WireError::Malformed("chunk length above 0x3FFF")));
            }
            if !ctx.check_replay(salt) {
                return Ok(reject(WireError::Replay));
            }
            let mut chunk = ChunkCipher::new(cipher);
            chunk.skip_one();
            let key = Secret::from_slice(user.secret());
            self.state = State::Address {
                user,
                key,
                reader: ChunkReader::new(chunk, Some(len_out), MAX_PAYLOAD),
                consumed: need,
                plain: Vec::new(),
            };
        }
        let State::Address {
            reader,
            consumed,
            plain,
            ..
        } = &mut self.state
        else {
            return Err(WireError::Malformed("handshake already finished"));
        };
        let rest = self.buf.get(*consumed..).unwrap_or_default();
        *consumed += reader.open(rest, plain)?;
        let (dest, used) = match address::parse(plain)? {
            Parsed::Done(d, n) => (d, n),
            Parsed::Incomplete if plain.len() > MAX_ADDRESS_PLAIN => {
                return Err(WireError::Malformed("no address in the first chunks"))
            }
            Parsed::Incomplete => return Ok(Step::NeedMore(0)),
        };
        let State::Address {
            user,
            key,
            reader,
            consumed,
            plain,
        } = std::mem::replace(&mut self.state, State::Finished)
        else {
            return Err(WireError::Malformed("handshake state"));
        };
        let carry = self.buf.get(consumed..).unwrap_or_default().to_vec();
        let initial_upload = plain.get(used..).unwrap_or_default().to_vec();
        self.buf = Vec::new();
        // The response salt is recorded too: AEAD-2017 requests and responses look alike, so a
        // reflected response must not pass as a request.
        let mut rsalt = [0u8; 32];
        random_bytes(&mut rsalt[..salt_len])?;
        let _ = ctx.check_replay(&rsalt[..salt_len]);
        let writer = ChunkWriter::new(
            ChunkCipher::new(session_cipher(self.kind, key.as_slice(), &rsalt[..salt_len])?),
            MAX_PAYLOAD,
        );
        let codec = Aead2017Codec {
            reader,
            carry,
            writer,
            salt_to_send: Some(Secret::from_slice(&rsalt[..salt_len])),
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

impl StreamHandshake for Aead2017Handshake {
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

/// AEAD-2017 UDP codec.
pub struct Aead2017Udp {
    kind: AeadKind,
}

impl Aead2017Udp {
    pub fn new(kind: AeadKind) -> Self {
        Aead2017Udp { kind }
    }
}

impl PacketCodec for Aead2017Udp {
    fn open_packet(
        &self,
        pkt: &mut [u8],
        hint: Option<&UserRef>,
        ctx: &dyn AuthContext,
    ) -> Result<InboundPacket, WireError> {
        let salt_len = self.kind.key_len();
        if pkt.len() < salt_len + TAG_LEN + 1 {
            return Err(WireError::Malformed("datagram shorter than salt and tag"));
        }
        let (salt, body) = pkt.split_at_mut(salt_len);
        // A failed open may scribble on the buffer, so every attempt starts from a copy.
        let original = body.to_vec();
        let mut plain_len = 0;
        let mut first = true;
        let mut try_open = |c: &AeadCipher| {
            if !first {
                body.copy_from_slice(&original);
            }
            first = false;
            match c.open_in_place([0; 12], body) {
                Ok(n) => {
                    plain_len = n;
                    true
                }
                Err(_) => false,
            }
        };
        let Some((user, _)) = find_user(self.kind, salt, hint, ctx, &mut try_open) else {
            return Err(WireError::Auth("no user's key opens the datagram"));
        };
        let plain = pkt
            .get(salt_len..salt_len + plain_len)
            .ok_or(WireError::Malformed("datagram"))?;
        let (dest, used) = address::parse_complete(plain)?;
        let start = salt_len + used;
        Ok(InboundPacket {
            user,
            session_id: 0,
            packet_id: 0,
            dest,
            payload: start..salt_len + plain_len,
        })
    }

    fn new_session(&self, first: &InboundPacket) -> Result<Box<dyn PacketSession>, WireError> {
        Ok(Box::new(Aead2017UdpSession {
            kind: self.kind,
            key: Secret::from_slice(first.user.secret()),
        }))
    }
}

/// AEAD-2017 UDP replies: a fresh salt per packet, nothing else to remember.
pub struct Aead2017UdpSession {
    kind: AeadKind,
    key: Secret,
}

impl PacketSession for Aead2017UdpSession {
    fn accept(&mut self, _pkt: &InboundPacket) -> bool {
        true
    }

    fn seal(&mut self, from: &Destination, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        seal_udp(self.kind, self.key.as_slice(), from, payload, out)
    }
}

/// One AEAD-2017 datagram (used for replies, and by tests as a client).
pub fn seal_udp(
    kind: AeadKind,
    key: &[u8],
    addr: &Destination,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WireError> {
    let n = kind.key_len();
    let mut salt = [0u8; 32];
    random_bytes(&mut salt[..n])?;
    let cipher = session_cipher(kind, key, &salt[..n])?;
    out.extend_from_slice(&salt[..n]);
    let start = out.len();
    address::write(addr, out)?;
    out.extend_from_slice(payload);
    cipher.seal_append([0; 12], out, start)
}

/// A client-side request stream (tests and benches): salt, then chunks.
pub struct Aead2017Client {
    writer: ChunkWriter,
    reader: Option<ChunkReader>,
    kind: AeadKind,
    key: Secret,
    salt: Option<Secret>,
    inbuf: Vec<u8>,
}

impl Aead2017Client {
    pub fn new(kind: AeadKind, key: &[u8]) -> Result<Self, WireError> {
        let n = kind.key_len();
        let mut salt = [0u8; 32];
        random_bytes(&mut salt[..n])?;
        let writer = ChunkWriter::new(
            ChunkCipher::new(session_cipher(kind, key, &salt[..n])?),
            MAX_PAYLOAD,
        );
        Ok(Aead2017Client {
            writer,
            reader: None,
            kind,
            key: Secret::from_slice(key),
            salt: Some(Secret::from_slice(&salt[..n])),
            inbuf: Vec::new(),
        })
    }

    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if let Some(s) = self.salt.take() {
            out.extend_from_slice(s.as_slice());
        }
        self.writer.seal(plain, out)
    }

    /// Feed server→client wire bytes; appends decoded plaintext.
    pub fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        self.inbuf.extend_from_slice(wire);
        if self.reader.is_none() {
            let n = self.kind.key_len();
            let Some(salt) = self.inbuf.get(..n) else {
                return Ok(());
            };
            let c = session_cipher(self.kind, self.key.as_slice(), salt)?;
            self.reader = Some(ChunkReader::new(ChunkCipher::new(c), None, MAX_PAYLOAD));
            self.inbuf.drain(..n);
        }
        if let Some(r) = self.reader.as_mut() {
            let used = r.open(&self.inbuf, out)?;
            self.inbuf.drain(..used);
        }
        Ok(())
    }
}

impl crate::UpstreamCodec for Aead2017Client {
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        Aead2017Client::seal(self, plain, out)
    }
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        Aead2017Client::open(self, wire, out)
    }
}
