//! The little HTTP/3 (RFC 9114) a Hysteria 2 server needs: read one request's HEADERS on a
//! bidi stream, answer it with HEADERS (and DATA), and announce SETTINGS on a control stream.
//! QPACK (RFC 9204) with the static table only: we advertise a dynamic table capacity of 0,
//! so a conforming client never references a dynamic entry (one that does is refused).
//!
//! ```text
//! frame (request streams and the control stream):
//! +-------------+---------------+----------------+
//! | type varint | length varint | payload        |
//! +-------------+---------------+----------------+
//!   0x00 DATA, 0x01 HEADERS (QPACK field section), 0x04 SETTINGS (id/value varint pairs);
//!   other types are skipped (RFC 9114 §9: unknown frame types are ignored)
//!
//! control stream (server → client, unidirectional): stream type varint 0x00, then SETTINGS:
//!   QPACK_MAX_TABLE_CAPACITY (0x01) = 0, QPACK_BLOCKED_STREAMS (0x07) = 0
//!
//! QPACK field section:
//! +------------------------------+-------------------+--------------+
//! | required insert count (8+)   | S | delta base (7+)| field lines… |
//! +------------------------------+-------------------+--------------+
//! field lines (N+ = prefixed integer with an N-bit prefix, RFC 7541 §5.1):
//!   1 T index(6+)                         indexed (T=1 static)
//!   0 1 N T index(4+) H len(7+) value     literal value, name from the table (T=1 static)
//!   0 0 1 N H len(3+) name H len(7+) value literal name and value
//!   0 0 0 1 …, 0 0 0 0 …                  post-base (dynamic table only): refused
//!   H = Huffman-coded string (RFC 7541 Appendix B)
//! ```

use crate::WireError;

use super::{put_varint, varint};

pub const FRAME_DATA: u64 = 0x00;
pub const FRAME_HEADERS: u64 = 0x01;
pub const FRAME_SETTINGS: u64 = 0x04;
/// Unidirectional stream types (RFC 9114 §6.2, RFC 9204 §4.2).
pub const STREAM_CONTROL: u64 = 0x00;
pub const SETTINGS_QPACK_MAX_TABLE_CAPACITY: u64 = 0x01;
pub const SETTINGS_QPACK_BLOCKED_STREAMS: u64 = 0x07;
/// H3_NO_ERROR: the application error code that closes a connection gracefully.
pub const H3_NO_ERROR: u32 = 0x100;
/// H3_REQUEST_REJECTED: a stream we do not serve.
pub const H3_REQUEST_REJECTED: u32 = 0x10b;

/// The largest HEADERS frame accepted (the auth request carries up to a few KiB of padding).
pub const MAX_HEADERS: usize = 64 * 1024;
/// Field lines accepted in one request.
const MAX_FIELDS: usize = 128;

/// One decoded request head (the QUIC seam's web request).
pub use crate::quic::WebRequest as Request;

/// The server's control stream: its type, then SETTINGS (no dynamic QPACK table).
pub fn control_stream_preface() -> Vec<u8> {
    let mut settings = Vec::new();
    put_varint(&mut settings, SETTINGS_QPACK_MAX_TABLE_CAPACITY);
    put_varint(&mut settings, 0);
    put_varint(&mut settings, SETTINGS_QPACK_BLOCKED_STREAMS);
    put_varint(&mut settings, 0);
    let mut out = Vec::new();
    put_varint(&mut out, STREAM_CONTROL);
    put_frame(&mut out, FRAME_SETTINGS, &settings);
    out
}

pub fn put_frame(out: &mut Vec<u8>, ty: u64, payload: &[u8]) {
    put_varint(out, ty);
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

/// Reads a request head from the start of a request stream: `Ok(None)` while the HEADERS
/// frame is incomplete. Unknown frames before it are skipped; DATA before HEADERS, or a
/// HEADERS frame larger than [`MAX_HEADERS`], is an error.
pub fn parse_request(buf: &[u8]) -> Result<Option<Request>, WireError> {
    Ok(parse_request_head(buf)?.map(|(r, _)| r))
}

/// [`parse_request`], with the number of bytes up to the end of the HEADERS frame (the body's
/// frames follow).
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(Request, usize)>, WireError> {
    let mut at = 0;
    loop {
        let Some((ty, n)) = buf.get(at..).and_then(varint) else {
            return Ok(None);
        };
        let Some((len, m)) = buf.get(at + n..).and_then(varint) else {
            return Ok(None);
        };
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= MAX_HEADERS)
            .ok_or(WireError::Malformed(
                "http3: frame larger than 64 KiB before the request head",
            ))?;
        let start = at + n + m;
        let Some(payload) = buf.get(start..start + len) else {
            return Ok(None);
        };
        match ty {
            FRAME_HEADERS => return decode_request(payload).map(|r| Some((r, start + len))),
            FRAME_DATA => return Err(WireError::Malformed("http3: DATA before HEADERS")),
            // SETTINGS and the other control-stream frames are errors on a request stream
            // (RFC 9114 §7.2.4): refuse like any malformed request.
            0x03 | FRAME_SETTINGS | 0x05 | 0x07 | 0x0d => {
                return Err(WireError::Malformed("http3: control frame on a request stream"))
            }
            _ => at = start + len,
        }
    }
}

/// The frames of a request body after its HEADERS (RFC 9114 §4.1): DATA payloads are the
/// body, a second HEADERS frame is the trailers (skipped), unknown frame types are skipped.
/// Frames are taken as they arrive: a DATA frame of any length passes through in pieces, so
/// only a frame's type and length are ever waited for.
#[derive(Debug, Default)]
pub struct BodyDecoder {
    /// Payload bytes of the current DATA frame still to come.
    data_left: u64,
    /// Bytes of the current skipped frame still to come.
    skip_left: u64,
    /// Trailers were seen: nothing but unknown frames may follow.
    trailers: bool,
}

impl BodyDecoder {
    /// Takes what it can of `input`, appending body bytes to `out`; returns the bytes taken
    /// (an incomplete frame header stays in `input` for the next call).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let mut at = 0;
        loop {
            let rest = input.get(at..).unwrap_or_default();
            if rest.is_empty() {
                return Ok(at);
            }
            if self.data_left > 0 {
                let n = rest
                    .len()
                    .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
                out.extend_from_slice(rest.get(..n).unwrap_or_default());
                self.data_left -= n as u64;
                at += n;
                continue;
            }
            if self.skip_left > 0 {
                let n = rest
                    .len()
                    .min(usize::try_from(self.skip_left).unwrap_or(usize::MAX));
                self.skip_left -= n as u64;
                at += n;
                continue;
            }
            let Some((ty, n)) = varint(rest) else {
                return Ok(at);
            };
            let Some((len, m)) = rest.get(n..).and_then(varint) else {
                return Ok(at);
            };
            at += n + m;
            match ty {
                FRAME_DATA if self.trailers => {
                    return Err(WireError::Malformed("http3: DATA after the trailers"))
                }
                FRAME_DATA => self.data_left = len,
                FRAME_HEADERS if self.trailers => {
                    return Err(WireError::Malformed("http3: HEADERS after the trailers"))
                }
                FRAME_HEADERS if len > MAX_HEADERS as u64 => {
                    return Err(WireError::Malformed("http3: trailers larger than 64 KiB"))
                }
                FRAME_HEADERS => {
                    self.trailers = true;
                    self.skip_left = len;
                }
                0x03 | FRAME_SETTINGS | 0x05 | 0x07 | 0x0d => {
                    return Err(WireError::Malformed("http3: control frame on a request stream"))
                }
                _ => self.skip_left = len,
            }
        }
    }

    /// Whether the stream may end here (not inside a frame).
    pub fn at_frame_boundary(&self) -> bool {
        self.data_left == 0 && self.skip_left == 0
    }
}

/// Appends a DATA frame's type and length (its payload is written after it).
pub fn put_data_header(out: &mut Vec<u8>, len: usize) {
    put_varint(out, FRAME_DATA);
    put_varint(out, len as u64);
}

/// Decodes a prefixed integer with an `bits`-bit prefix at `buf[*at]`, advancing `at`.
fn prefixed_int(buf: &[u8], at: &mut usize, bits: u8) -> Result<u64, WireError> {
    const TRUNCATED: WireError = WireError::Malformed("qpack: truncated integer");
    let mask = ((1u16 << bits) - 1) as u8;
    let first = buf.get(*at).ok_or(TRUNCATED)? & mask;
    *at += 1;
    if first < mask {
        return Ok(u64::from(first));
    }
    let mut v = u64::from(mask);
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*at).ok_or(TRUNCATED)?;
        *at += 1;
        // Ten continuation bytes exceed 64 bits: no header field needs that.
        if shift > 56 {
            return Err(WireError::Malformed("qpack: integer too large"));
        }
        v += u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
}

/// A string literal whose length prefix has `bits` bits, the Huffman flag just above it.
fn string(buf: &[u8], at: &mut usize, bits: u8) -> Result<String, WireError> {
    let huffman = buf.get(*at).is_some_and(|b| b & (1 << bits) != 0);
    let len = prefixed_int(buf, at, bits)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_HEADERS)
        .ok_or(WireError::Malformed("qpack: string longer than the frame"))?;
    let raw = buf
        .get(*at..*at + len)
        .ok_or(WireError::Malformed("qpack: truncated string"))?;
    *at += len;
    let bytes = if huffman {
        loona_hpack::huffman::HuffmanDecoder::new()
            .decode(raw)
            .map_err(|_| WireError::Malformed("qpack: bad Huffman string"))?
    } else {
        raw.to_vec()
    };
    String::from_utf8(bytes).map_err(|_| WireError::Malformed("qpack: header is not UTF-8"))
}

fn static_entry(index: u64) -> Result<(&'static str, &'static str), WireError> {
    usize::try_from(index)
        .ok()
        .and_then(|i| STATIC_TABLE.get(i))
        .copied()
        .ok_or(WireError::Malformed("qpack: static table index out of range"))
}

/// Decodes a field section (the payload of a HEADERS frame) into a request head.
pub fn decode_request(block: &[u8]) -> Result<Request, WireError> {
    let fields = decode_fields(block)?;
    let mut req = Request::default();
    for (name, value) in fields {
        match name.as_str() {
            ":method" => req.method = value,
            ":path" => req.path = value,
            ":authority" => req.authority = value,
            ":scheme" | ":protocol" => {}
            n if n.starts_with(':') => return Err(WireError::Malformed("http3: unknown pseudo-header")),
            // Go's client sends `host` nowhere, but an HTTP/1-minded one might.
            "host" if req.authority.is_empty() => req.authority = value,
            _ => req.headers.push((name, value)),
        }
    }
    if req.method.is_empty() {
        return Err(WireError::Malformed("http3: request without :method"));
    }
    Ok(req)
}

/// Every (name, value) of a field section, in order.
pub fn decode_fields(block: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut at = 0;
    let required_insert_count = prefixed_int(block, &mut at, 8)?;
    if required_insert_count != 0 {
        return Err(WireError::Malformed(
            "qpack: reference to the dynamic table (capacity is 0)",
        ));
    }
    // Base (sign + delta): meaningless without a dynamic table.
    prefixed_int(block, &mut at, 7)?;
    let mut out = Vec::new();
    while let Some(&b) = block.get(at) {
        if out.len() >= MAX_FIELDS {
            return Err(WireError::Malformed("qpack: too many header fields"));
        }
        if b & 0x80 != 0 {
            if b & 0x40 == 0 {
                return Err(WireError::Malformed("qpack: dynamic table reference"));
            }
            let (n, v) = static_entry(prefixed_int(block, &mut at, 6)?)?;
            out.push((n.to_string(), v.to_string()));
        } else if b & 0x40 != 0 {
            if b & 0x10 == 0 {
                return Err(WireError::Malformed("qpack: dynamic table reference"));
            }
            let (n, _) = static_entry(prefixed_int(block, &mut at, 4)?)?;
            let value = string(block, &mut at, 7)?;
            out.push((n.to_string(), value));
        } else if b & 0x20 != 0 {
            let name = string(block, &mut at, 3)?;
            let value = string(block, &mut at, 7)?;
            out.push((name.to_ascii_lowercase(), value));
        } else {
            return Err(WireError::Malformed("qpack: post-base (dynamic table) reference"));
        }
    }
    Ok(out)
}

/// Appends a prefixed integer: `flags` fill the bits above the `bits`-bit prefix.
fn put_prefixed(out: &mut Vec<u8>, flags: u8, bits: u8, mut v: u64) {
    let max = ((1u16 << bits) - 1) as u8;
    if v < u64::from(max) {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max);
    v -= u64::from(max);
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Index of `:status` with this value in the static table, or of any `:status` entry.
fn status_index(status: u16) -> (u64, bool) {
    let code = status.to_string();
    let mut any = None;
    for (i, (n, v)) in STATIC_TABLE.iter().enumerate() {
        if *n == ":status" {
            if *v == code {
                return (i as u64, true);
            }
            any.get_or_insert(i as u64);
        }
    }
    (any.unwrap_or(24), false)
}

/// Encodes a response: HEADERS (`:status` and `headers`, lower-case names, no Huffman, static
/// table only), then one DATA frame when `body` is not empty.
pub fn response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut block = vec![0u8, 0u8];
    let (idx, exact) = status_index(status);
    if exact {
        put_prefixed(&mut block, 0xc0, 6, idx);
    } else {
        put_prefixed(&mut block, 0x50, 4, idx);
        let code = status.to_string();
        put_prefixed(&mut block, 0x00, 7, code.len() as u64);
        block.extend_from_slice(code.as_bytes());
    }
    for (name, value) in headers {
        let exact = STATIC_TABLE.iter().position(|(n, v)| n == name && v == value);
        if let Some(i) = exact {
            put_prefixed(&mut block, 0xc0, 6, i as u64);
            continue;
        }
        match STATIC_TABLE.iter().position(|(n, _)| n == name) {
            Some(i) => put_prefixed(&mut block, 0x50, 4, i as u64),
            None => {
                put_prefixed(&mut block, 0x20, 3, name.len() as u64);
                block.extend_from_slice(name.as_bytes());
            }
        }
        put_prefixed(&mut block, 0x00, 7, value.len() as u64);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = Vec::with_capacity(block.len() + body.len() + 16);
    put_frame(&mut out, FRAME_HEADERS, &block);
    if !body.is_empty() {
        put_frame(&mut out, FRAME_DATA, body);
    }
    out
}

/// QPACK's static table (RFC 9204 Appendix A), index = position.
pub const STATIC_TABLE: [(&str, &str); 99] = [
    (":authority", ""),
    (":path", "/"),
    ("age", "0"),
    ("content-disposition", ""),
    ("content-length", "0"),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("referer", ""),
    ("set-cookie", ""),
    (":method", "CONNECT"),
    (":method", "DELETE"),
    (":method", "GET"),
    (":method", "HEAD"),
    (":method", "OPTIONS"),
    (":method", "POST"),
    (":method", "PUT"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "103"),
    (":status", "200"),
    (":status", "304"),
    (":status", "404"),
    (":status", "503"),
    ("accept", "*/*"),
    ("accept", "application/dns-message"),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-ranges", "bytes"),
    ("access-control-allow-headers", "cache-control"),
    ("access-control-allow-headers", "content-type"),
    ("access-control-allow-origin", "*"),
    ("cache-control", "max-age=0"),
    ("cache-control", "max-age=2592000"),
    ("cache-control", "max-age=604800"),
    ("cache-control", "no-cache"),
    ("cache-control", "no-store"),
    ("cache-control", "public, max-age=31536000"),
    ("content-encoding", "br"),
    ("content-encoding", "gzip"),
    ("content-type", "application/dns-message"),
    ("content-type", "application/javascript"),
    ("content-type", "application/json"),
    ("content-type", "application/x-www-form-urlencoded"),
    ("content-type", "image/gif"),
    ("content-type", "image/jpeg"),
    ("content-type", "image/png"),
    ("content-type", "text/css"),
    ("content-type", "text/html; charset=utf-8"),
    ("content-type", "text/plain"),
    ("content-type", "text/plain;charset=utf-8"),
    ("range", "bytes=0-"),
    ("strict-transport-security", "max-age=31536000"),
    ("strict-transport-security", "max-age=31536000; includesubdomains"),
    (
        "strict-transport-security",
        "max-age=31536000; includesubdomains; preload",
    ),
    ("vary", "accept-encoding"),
    ("vary", "origin"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
    (":status", "100"),
    (":status", "204"),
    (":status", "206"),
    (":status", "302"),
    (":status", "400"),
    (":status", "403"),
    (":status", "421"),
    (":status", "425"),
    (":status", "500"),
    ("accept-language", ""),
    ("access-control-allow-credentials", "FALSE"),
    ("access-control-allow-credentials", "TRUE"),
    ("access-control-allow-headers", "*"),
    ("access-control-allow-methods", "get"),
    ("access-control-allow-methods", "get, post, options"),
    ("access-control-allow-methods", "options"),
    ("access-control-expose-headers", "content-length"),
    ("access-control-request-headers", "content-type"),
    ("access-control-request-method", "get"),
    ("access-control-request-method", "post"),
    ("alt-svc", "clear"),
    ("authorization", ""),
    (
        "content-security-policy",
        "script-src 'none'; object-src 'none'; base-uri 'none'",
    ),
    ("early-data", "1"),
    ("expect-ct", ""),
    ("forwarded", ""),
    ("if-range", ""),
    ("origin", ""),
    ("purpose", "prefetch"),
    ("server", ""),
    ("timing-allow-origin", "*"),
    ("upgrade-insecure-requests", "1"),
    ("user-agent", ""),
    ("x-forwarded-for", ""),
    ("x-frame-options", "deny"),
    ("x-frame-options", "sameorigin"),
];
