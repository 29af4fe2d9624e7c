//! WebSocket transport (RFC 6455), server side, as xray serves it: an HTTP/1.1 Upgrade request
//! (path and optional Host checked, early data in `Sec-WebSocket-Protocol`), a 101 reply, then
//! binary frames in both directions.
//!
//! ```text
//!  0               1               2               3
//!  0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
//! +-+-+-+-+-------+-+-------------+-------------------------------+
//! |F|R|R|R| opcode|M| Payload len |    Extended payload length    |
//! |I|S|S|S|  (4)  |A|     (7)     |             (16/64)           |
//! |N|V|V|V|       |S|             |   (if payload len==126/127)   |
//! | |1|2|3|       |K|             |                               |
//! +-+-+-+-+-------+-+-------------+ - - - - - - - - - - - - - - - +
//! |     Extended payload length continued, if payload len == 127  |
//! + - - - - - - - - - - - - - - - +-------------------------------+
//! |                               | Masking-key, if MASK set to 1 |
//! +-------------------------------+-------------------------------+
//! | Masking-key (continued)       |          Payload Data         |
//! +-------------------------------- - - - - - - - - - - - - - - - +
//! opcode: 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong
//! client → server frames are masked (payload[i] ^= key[i % 4]); server → client are not.
//! ```
//!
//! Early data (xray): the client may put base64url (no padding) of its first bytes in
//! `Sec-WebSocket-Protocol`; the server decodes it (after mapping `+/` to `-_` and dropping
//! `=`), hands it to the protocol as the stream's first bytes and echoes the header verbatim
//! in the 101 reply.
//!
//! The codec streams payload: a frame's bytes are unmasked and passed on as they arrive, so
//! between reads it keeps only the partial header (≤ 14 bytes, inline) and the position in
//! the current frame — no buffer while idle. Control frames (≤ 125 bytes) are collected, then
//! answered: ping → pong, close → close (status echoed), pong ignored.
//!
//! Pongs are coalesced (RFC 6455 §5.5.3: an endpoint MAY answer only the most recent ping):
//! what waits for a client that pings and never reads is one pong and one close, inline —
//! a ping flood costs the reads, never memory.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use sha1::{Digest, Sha1};
use v2sp_shared::dpconfig::HttpPathSettings;

use super::http::{error_response, HeadReader};
use super::{TransportHandshake, Upgrade, Upgraded};
use crate::{StreamCodec, WireError};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest frame accepted (payload is streamed, so this only bounds nonsense lengths).
pub const MAX_FRAME: u64 = 64 << 20;

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// base64url without padding, lenient about trailing bits like Go's decoder.
const EARLY: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Early data carried in `Sec-WebSocket-Protocol` (`None` when absent or not base64url).
pub fn early_data(header: &str) -> Option<Vec<u8>> {
    let s: String = header
        .chars()
        .filter(|&c| c != '=')
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    EARLY.decode(s.as_bytes()).ok().filter(|d| !d.is_empty())
}

/// The Upgrade request stage.
pub struct WsHandshake {
    cfg: HttpPathSettings,
    head: HeadReader,
}

impl WsHandshake {
    pub fn new(cfg: &HttpPathSettings) -> Self {
        WsHandshake {
            cfg: cfg.clone(),
            head: HeadReader::default(),
        }
    }
}

impl TransportHandshake for WsHandshake {
    fn feed(&mut self, data: &[u8]) -> Result<Upgrade, WireError> {
        let Some(req) = self.head.feed(data)? else {
            return Ok(Upgrade::NeedMore);
        };
        // xray checks Host, then path (404), then gorilla/websocket the upgrade itself.
        if !self.cfg.host.is_empty() && !req.host_is(&self.cfg.host) {
            return Ok(Upgrade::Reject(error_response("404 Not Found")));
        }
        if req.path() != self.cfg.path {
            return Ok(Upgrade::Reject(error_response("404 Not Found")));
        }
        if !req.header_has_token("connection", "upgrade") || !req.header_has_token("upgrade", "websocket") {
            return Ok(Upgrade::Reject(error_response("400 Bad Request")));
        }
        if req.method != "GET" {
            return Ok(Upgrade::Reject(error_response("405 Method Not Allowed")));
        }
        if req.header("sec-websocket-version") != Some("13") {
            return Ok(Upgrade::Reject(error_response("400 Bad Request")));
        }
        let key = req.header("sec-websocket-key").unwrap_or_default();
        let key_ok = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .is_ok_and(|k| k.len() == 16);
        if !key_ok {
            return Ok(Upgrade::Reject(error_response("400 Bad Request")));
        }
        let mut reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            accept_key(key)
        );
        let mut early = Vec::new();
        if let Some(proto) = req.header("sec-websocket-protocol") {
            if let Some(ed) = early_data(proto) {
                early = ed;
                reply.push_str("Sec-WebSocket-Protocol: ");
                reply.push_str(proto);
                reply.push_str("\r\n");
            }
        }
        reply.push_str("\r\n");
        let rest = self.head.take_rest(req.len);
        Ok(Upgrade::Done(Upgraded {
            reply: reply.into_bytes(),
            early,
            rest,
            framing: Some(Box::new(WsCodec::default())),
        }))
    }
}

/// Frame codec after the upgrade (server side).
#[derive(Default)]
pub struct WsCodec {
    /// Partial frame header.
    hdr: [u8; 14],
    hdr_len: u8,
    /// Inside a frame's payload.
    in_frame: bool,
    opcode: u8,
    remaining: u64,
    mask: [u8; 4],
    mask_pos: usize,
    /// A fragmented data message is open (continuation frames expected).
    in_message: bool,
    /// Payload of the control frame being read.
    ctrl: Control,
    /// The pong for the latest unanswered ping (payload ≤ 125 bytes).
    pong: Option<Control>,
    /// The close to echo: its status code (`None` inside when the client sent none).
    close: Option<Option<[u8; 2]>>,
    /// The client sent close: later bytes are ignored.
    closed: bool,
}

/// A control frame's payload (≤ 125 bytes, inline).
#[derive(Clone, Copy)]
struct Control {
    payload: [u8; 125],
    len: u8,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            payload: [0; 125],
            len: 0,
        }
    }
}

impl Control {
    fn bytes(&self) -> &[u8] {
        self.payload.get(..usize::from(self.len)).unwrap_or_default()
    }
}

/// Most control bytes a [`WsCodec`] ever queues: one pong and one close.
pub const MAX_CONTROL_OUT: usize = (2 + 125) + (2 + 2);

/// Appends a server frame (FIN set, unmasked).
pub fn write_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if let Ok(n16) = u16::try_from(n) {
        out.push(126);
        out.extend_from_slice(&n16.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

/// XORs `buf` with the mask, starting at mask offset `pos` (8 bytes at a time).
fn unmask(buf: &mut [u8], mask: [u8; 4], pos: usize) {
    let m: [u8; 4] = std::array::from_fn(|i| mask[(pos + i) & 3]);
    let m8 = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        if let Ok(a) = <[u8; 8]>::try_from(&*c) {
            c.copy_from_slice(&(u64::from_ne_bytes(a) ^ m8).to_ne_bytes());
        }
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i & 3];
    }
}

impl WsCodec {
    /// Header length once the first two bytes are known.
    fn header_len(&self) -> Option<usize> {
        let b1 = *self.hdr.get(1)?;
        if self.hdr_len < 2 {
            return None;
        }
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        Some(2 + ext + mask)
    }

    /// Parses a complete header in `hdr`.
    fn start_frame(&mut self) -> Result<(), WireError> {
        let h = self.hdr;
        let (b0, b1) = (h[0], h[1]);
        if b0 & 0x70 != 0 {
            return Err(WireError::Malformed("ws: reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(WireError::Malformed("ws: client frame not masked"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0f;
        let (len, at) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(h.get(2..10).unwrap_or(&[0; 8]));
                (u64::from_be_bytes(l), 10)
            }
            n => (u64::from(n), 2),
        };
        let mut mask = [0u8; 4];
        mask.copy_from_slice(h.get(at..at + 4).unwrap_or(&[0; 4]));
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > 125 {
                    return Err(WireError::Malformed("ws: bad control frame"));
                }
            }
            OP_CONT => {
                if !self.in_message {
                    return Err(WireError::Malformed("ws: continuation without a message"));
                }
                self.in_message = !fin;
            }
            OP_TEXT | OP_BINARY => {
                if self.in_message {
                    return Err(WireError::Malformed("ws: new message inside a fragmented one"));
                }
                self.in_message = !fin;
            }
            _ => return Err(WireError::Malformed("ws: unknown opcode")),
        }
        if len > MAX_FRAME {
            return Err(WireError::Malformed("ws: frame too long"));
        }
        self.opcode = opcode;
        self.remaining = len;
        self.mask = mask;
        self.mask_pos = 0;
        self.in_frame = true;
        self.hdr_len = 0;
        Ok(())
    }

    fn is_control(&self) -> bool {
        self.opcode >= OP_CLOSE
    }

    fn end_frame(&mut self) {
        self.in_frame = false;
        if !self.is_control() {
            return;
        }
        let payload = std::mem::take(&mut self.ctrl);
        match self.opcode {
            // Only the latest ping is answered: an earlier pong not yet sent is replaced.
            OP_PING => self.pong = Some(payload),
            OP_CLOSE => {
                // Echo the status code (none when the client sent none), then ignore the rest.
                self.close = Some(payload.bytes().get(..2).and_then(|c| c.try_into().ok()));
                self.closed = true;
            }
            _ => {}
        }
    }

    /// Bytes of control frames waiting to be sent.
    pub fn control_len(&self) -> usize {
        let pong = self.pong.map_or(0, |p| 2 + usize::from(p.len));
        let close = self.close.map_or(0, |c| 2 + c.map_or(0, |c| c.len()));
        pong + close
    }
}

impl StreamCodec for WsCodec {
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let mut rest = wire;
        // Bounded: every pass consumes at least one byte or returns.
        while !rest.is_empty() && !self.closed {
            if !self.in_frame {
                let need = self.header_len().unwrap_or(2);
                let have = usize::from(self.hdr_len);
                let take = need.saturating_sub(have).min(rest.len());
                let (head, tail) = rest.split_at(take);
                if let Some(dst) = self.hdr.get_mut(have..have + take) {
                    dst.copy_from_slice(head);
                }
                self.hdr_len += take as u8;
                rest = tail;
                match self.header_len() {
                    Some(n) if usize::from(self.hdr_len) >= n => {
                        self.start_frame()?;
                        if self.remaining == 0 {
                            self.end_frame();
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let n = usize::try_from(self.remaining)
                .unwrap_or(usize::MAX)
                .min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            let dst = if self.is_control() {
                // Inline (≤ 125 bytes, checked when the frame started): no allocation per ping.
                let at = usize::from(self.ctrl.len);
                let dst = self
                    .ctrl
                    .payload
                    .get_mut(at..at + n)
                    .ok_or(WireError::Malformed("ws: bad control frame"))?;
                dst.copy_from_slice(chunk);
                self.ctrl.len += n as u8;
                dst
            } else {
                let start = out.len();
                out.extend_from_slice(chunk);
                out.get_mut(start..).unwrap_or_default()
            };
            unmask(dst, self.mask, self.mask_pos);
            self.mask_pos = (self.mask_pos + n) & 3;
            self.remaining -= n as u64;
            rest = tail;
            if self.remaining == 0 {
                self.end_frame();
            }
        }
        Ok(wire.len())
    }

    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if !plain.is_empty() {
            write_frame(OP_BINARY, plain, out);
        }
        Ok(())
    }

    fn has_control(&self) -> bool {
        self.pong.is_some() || self.close.is_some()
    }

    fn take_control(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        // A ping answered before the close it preceded.
        if let Some(p) = self.pong.take() {
            write_frame(OP_PONG, p.bytes(), out);
        }
        if let Some(c) = self.close.take() {
            write_frame(OP_CLOSE, c.as_ref().map_or(&[][..], |c| &c[..]), out);
        }
        Ok(())
    }

    fn output_over_budget(&self) -> bool {
        // Never true with coalesced pongs; kept honest should that change.
        self.control_len() > MAX_CONTROL_OUT
    }
}

#[cfg(test)]
mod tests;
