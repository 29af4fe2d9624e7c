//! VMess body chunks (option ChunkStream), one direction per [`ChunkReader`]/[`ChunkWriter`].
//!
//! ```text
//! +-----------------+-------------------------------+-----------------+
//! | size (2 B)      | payload sealed (len + tag)    | padding (P B)   |   ... repeated
//! | or sealed size  | nonce = count (2 BE) ‖ iv[2..12], count +1 per chunk |
//! |   (2 + 16 B)    |                               |                 |
//! +-----------------+-------------------------------+-----------------+
//! size = len + tag + P               (tag = 16 for aes-128-gcm/chacha20-poly1305, 0 for none)
//! ChunkMasking:        size on the wire = size XOR next2(SHAKE128(iv))
//! GlobalPadding:       P = next2(SHAKE128(iv)) % 64, drawn *before* the mask of the same chunk
//! AuthenticatedLength: size field = AEAD(KDF16(request key, "auth_len"), own counter,
//!                      iv = request iv in both directions) of (size - tag) as 2 BE bytes
//! a chunk whose size = tag + P (empty payload) ends the stream
//! ```
//! Keys/IVs: request = the header's key and iv; response = SHA-256(…)[..16] of each.

use rand::RngCore;

use super::crypto::{chunk_nonce, kdf16, Aead, AeadKind, AUTH_LEN, TAG_LEN};
use super::mask::ShakeStream;
use crate::{StreamCodec, WireError};

pub const OPT_CHUNK_STREAM: u8 = 0x01;
pub const OPT_CHUNK_MASKING: u8 = 0x04;
pub const OPT_GLOBAL_PADDING: u8 = 0x08;
pub const OPT_AUTHENTICATED_LENGTH: u8 = 0x10;

/// Largest chunk (size field + sealed payload + padding) we write: Xray's buffer size.
const MAX_WRITE_CHUNK: usize = 8192;
const MAX_PADDING: usize = 64;

/// Body security after the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    Aead(AeadKind),
    /// Chunks without encryption (`none` with ChunkStream).
    None,
}

/// What both directions share: security, options and the request key/iv (auth_len key).
#[derive(Clone, Copy)]
pub struct BodyParams {
    pub security: Security,
    pub options: u8,
    pub request_key: [u8; 16],
    pub request_iv: [u8; 16],
}

enum SizeCodec {
    Plain,
    /// Chunk masking (and/or padding) draw from here.
    Shake,
    /// Keyed from the *request* key, nonces from the *request* iv, in both directions.
    Sealed {
        aead: Aead,
        iv: [u8; 16],
        count: u16,
    },
}

/// One direction's framing state.
struct Framing {
    payload: Option<Aead>,
    count: u16,
    iv: [u8; 16],
    size: SizeCodec,
    shake: Option<ShakeStream>,
    padding: bool,
}

impl Framing {
    /// `key`/`iv` of this direction.
    fn new(p: &BodyParams, key: &[u8; 16], iv: &[u8; 16]) -> Result<Self, WireError> {
        let payload = match p.security {
            Security::Aead(kind) => Some(Aead::body(kind, key)?),
            Security::None => None,
        };
        let masking = p.options & OPT_CHUNK_MASKING != 0;
        let padding = p.options & OPT_GLOBAL_PADDING != 0;
        let shake = (masking || padding).then(|| ShakeStream::new(iv));
        let size = if p.options & OPT_AUTHENTICATED_LENGTH != 0 {
            let k = kdf16(&p.request_key, &[AUTH_LEN]);
            let kind = match p.security {
                Security::Aead(kind) => kind,
                Security::None => AeadKind::Aes128Gcm,
            };
            SizeCodec::Sealed {
                aead: Aead::body(kind, &k)?,
                iv: p.request_iv,
                count: 0,
            }
        } else if masking {
            SizeCodec::Shake
        } else {
            SizeCodec::Plain
        };
        Ok(Framing {
            payload,
            count: 0,
            iv: *iv,
            size,
            shake,
            padding,
        })
    }

    fn overhead(&self) -> usize {
        if self.payload.is_some() {
            TAG_LEN
        } else {
            0
        }
    }

    fn size_len(&self) -> usize {
        match self.size {
            SizeCodec::Sealed { .. } => 2 + TAG_LEN,
            _ => 2,
        }
    }

    fn next2(&mut self) -> u16 {
        self.shake.as_mut().map_or(0, ShakeStream::next_u16)
    }

    fn next_padding(&mut self) -> usize {
        if self.padding {
            usize::from(self.next2() % MAX_PADDING as u16)
        } else {
            0
        }
    }

    fn payload_nonce(&mut self) -> [u8; 12] {
        let n = chunk_nonce(&self.iv, self.count);
        self.count = self.count.wrapping_add(1);
        n
    }

    /// Decodes a size field (`field.len() == size_len()`); draws padding first, as Xray does.
    fn decode_size(&mut self, field: &[u8]) -> Result<(usize, usize), WireError> {
        let padding = self.next_padding();
        let overhead = self.overhead();
        let size = match &mut self.size {
            SizeCodec::Plain => usize::from(be16(field)?),
            SizeCodec::Shake => {
                let v = be16(field)?;
                usize::from(v ^ self.next2())
            }
            SizeCodec::Sealed { aead, iv, count } => {
                let mut tmp = [0u8; 2 + TAG_LEN];
                let src = field
                    .get(..2 + TAG_LEN)
                    .ok_or(WireError::Malformed("vmess: short size"))?;
                tmp.copy_from_slice(src);
                aead.open_in_place(chunk_nonce(iv, *count), &[], &mut tmp)?;
                *count = count.wrapping_add(1);
                usize::from(be16(&tmp)?) + overhead
            }
        };
        Ok((size, padding))
    }

    fn encode_size(&mut self, size: usize, out: &mut Vec<u8>) -> Result<(), WireError> {
        let size16 = u16::try_from(size).map_err(|_| WireError::Unsupported("vmess: chunk too large"))?;
        let overhead = self.overhead() as u16;
        match &mut self.size {
            SizeCodec::Plain => out.extend_from_slice(&size16.to_be_bytes()),
            SizeCodec::Shake => {
                let m = self.next2();
                out.extend_from_slice(&(size16 ^ m).to_be_bytes());
            }
            SizeCodec::Sealed { aead, iv, count } => {
                let start = out.len();
                out.extend_from_slice(&size16.saturating_sub(overhead).to_be_bytes());
                aead.seal_append(chunk_nonce(iv, *count), &[], out, start)?;
                *count = count.wrapping_add(1);
            }
        }
        Ok(())
    }
}

fn be16(b: &[u8]) -> Result<u16, WireError> {
    match b {
        [a, c, ..] => Ok(u16::from_be_bytes([*a, *c])),
        _ => Err(WireError::Malformed("vmess: short size")),
    }
}

/// Opens one direction's chunks.
pub struct ChunkReader {
    f: Framing,
    /// Size and padding of a chunk whose size field was consumed but whose body is incomplete.
    pending: Option<(usize, usize)>,
    /// The end-of-stream chunk was seen; later bytes are discarded.
    done: bool,
}

impl ChunkReader {
    pub fn new(p: &BodyParams, key: &[u8; 16], iv: &[u8; 16]) -> Result<Self, WireError> {
        Ok(ChunkReader {
            f: Framing::new(p, key, iv)?,
            pending: None,
            done: false,
        })
    }

    /// Whether the end-of-stream chunk was seen.
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Opens every complete chunk of `wire`, appending plaintext to `out`; returns the bytes
    /// consumed (a partial chunk stays with the caller). On error `out` is left as it was.
    pub fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let start = out.len();
        let r = self.open_inner(wire, out, usize::MAX);
        if r.is_err() {
            out.truncate(start);
        }
        r.map(|(n, _)| n)
    }

    /// Opens at most one data chunk of `wire` (a datagram, for UDP), appending its plaintext
    /// to `out`. Returns the bytes consumed and whether a whole chunk was opened; a size field
    /// may be consumed without its chunk (kept pending for the next call), and the
    /// end-of-stream chunk consumes everything (see [`ChunkReader::finished`]).
    pub fn open_chunk(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), WireError> {
        let start = out.len();
        let r = self.open_inner(wire, out, 1);
        if r.is_err() {
            out.truncate(start);
        }
        r.map(|(n, c)| (n, c > 0))
    }

    /// Opens up to `max_chunks` data chunks; returns (bytes consumed, data chunks opened).
    fn open_inner(
        &mut self,
        wire: &[u8],
        out: &mut Vec<u8>,
        max_chunks: usize,
    ) -> Result<(usize, usize), WireError> {
        let mut pos = 0usize;
        let mut chunks = 0usize;
        loop {
            if self.done {
                return Ok((wire.len(), chunks));
            }
            if chunks >= max_chunks {
                return Ok((pos, chunks));
            }
            let (size, padding) = match self.pending {
                Some(sp) => sp,
                None => {
                    let n = self.f.size_len();
                    let Some(field) = wire.get(pos..pos + n) else {
                        return Ok((pos, chunks));
                    };
                    let sp = self.f.decode_size(field)?;
                    pos += n;
                    self.pending = Some(sp);
                    sp
                }
            };
            let overhead = self.f.overhead();
            let sealed = size
                .checked_sub(padding)
                .filter(|s| *s >= overhead)
                .ok_or(WireError::Malformed("vmess: chunk size below its overhead"))?;
            if sealed == overhead {
                self.done = true;
                self.pending = None;
                continue;
            }
            let Some(chunk) = wire.get(pos..pos + size) else {
                return Ok((pos, chunks));
            };
            let body = chunk.get(..sealed).ok_or(WireError::Malformed("vmess: chunk"))?;
            let at = out.len();
            out.extend_from_slice(body);
            let nonce = self.f.payload_nonce();
            if let Some(aead) = &self.f.payload {
                let region = out.get_mut(at..).ok_or(WireError::Malformed("vmess: chunk"))?;
                let n = aead.open_in_place(nonce, &[], region)?;
                out.truncate(at + n);
            }
            pos += size;
            self.pending = None;
            chunks += 1;
        }
    }
}

/// Seals one direction's chunks.
pub struct ChunkWriter {
    f: Framing,
}

impl ChunkWriter {
    pub fn new(p: &BodyParams, key: &[u8; 16], iv: &[u8; 16]) -> Result<Self, WireError> {
        Ok(ChunkWriter {
            f: Framing::new(p, key, iv)?,
        })
    }

    fn max_payload(&self) -> usize {
        MAX_WRITE_CHUNK - self.f.size_len() - self.f.overhead() - MAX_PADDING
    }

    /// Seals `plain` as one or more chunks (an empty `plain` writes the end-of-stream chunk).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if plain.is_empty() {
            return self.seal_one(&[], out);
        }
        let max = self.max_payload();
        for piece in plain.chunks(max) {
            self.seal_one(piece, out)?;
        }
        Ok(())
    }

    /// Seals `piece` as exactly one chunk (a datagram, for UDP). An empty `piece` would end
    /// the stream and one too large for a chunk's 16-bit size cannot be framed: both are
    /// refused before any framing state is drawn, so the stream stays usable.
    pub fn seal_chunk(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if piece.is_empty() {
            return Err(WireError::Unsupported("vmess: empty datagram"));
        }
        if piece.len() + self.f.overhead() + MAX_PADDING > usize::from(u16::MAX) {
            return Err(WireError::Unsupported("vmess: datagram too large for one chunk"));
        }
        self.seal_one(piece, out)
    }

    fn seal_one(&mut self, piece: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let padding = self.f.next_padding();
        let size = piece.len() + self.f.overhead() + padding;
        self.f.encode_size(size, out)?;
        let at = out.len();
        out.extend_from_slice(piece);
        let nonce = self.f.payload_nonce();
        if let Some(aead) = &self.f.payload {
            aead.seal_append(nonce, &[], out, at)?;
        }
        if padding > 0 {
            let at = out.len();
            out.resize(at + padding, 0);
            if let Some(p) = out.get_mut(at..) {
                rand::rng().fill_bytes(p);
            }
        }
        Ok(())
    }
}

/// The server's relay codec: opens request chunks, seals response chunks.
pub struct ServerBody {
    reader: ChunkReader,
    /// Wire bytes the handshake received beyond its last complete chunk.
    carry: Vec<u8>,
    writer: ChunkWriter,
}

impl ServerBody {
    pub fn new(p: &BodyParams, response_key: &[u8; 16], response_iv: &[u8; 16]) -> Result<Self, WireError> {
        Ok(ServerBody {
            reader: ChunkReader::new(p, &p.request_key, &p.request_iv)?,
            carry: Vec::new(),
            writer: ChunkWriter::new(p, response_key, response_iv)?,
        })
    }

    /// Opens what followed the header: complete chunks to `out`, the rest kept for `open`.
    pub fn open_first(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        let n = self.reader.open(wire, out)?;
        self.carry = wire.get(n..).unwrap_or_default().to_vec();
        Ok(())
    }
}

impl StreamCodec for ServerBody {
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        if self.carry.is_empty() {
            return self.reader.open(wire, out);
        }
        self.carry.extend_from_slice(wire);
        let n = self.reader.open(&self.carry, out)?;
        self.carry.drain(..n.min(self.carry.len()));
        Ok(wire.len())
    }
    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if plain.is_empty() {
            // An empty write would end the stream for the client.
            return Ok(());
        }
        self.writer.seal(plain, out)
    }
}
