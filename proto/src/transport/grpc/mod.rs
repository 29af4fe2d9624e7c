//! gRPC "gun" transport (xray `network: "grpc"`), server side: one HTTP/2 connection, one
//! bidirectional-streaming call `/<serviceName>/Tun` (or `/TunMulti`), the stream's bytes in
//! protobuf messages.
//!
//! ```text
//! request:  HEADERS  :method POST  :path /<serviceName>/Tun  content-type application/grpc
//! response: HEADERS  :status 200  content-type application/grpc
//! DATA (both ways) carries gRPC messages:
//!   | compressed u8 = 0 | length u32 BE | protobuf message (length bytes) |
//!   Hunk      { bytes data = 1; }           (Tun)       0x0A varint(n) data
//!   MultiHunk { repeated bytes data = 1; }  (TunMulti)  (0x0A varint(n) data)*
//! ```
//!
//! Messages may span DATA frames and a frame may hold several; payload is streamed out as it
//! arrives (nothing buffered but a varint or a 5-byte prefix). Both message types parse the
//! same way (every field 1 is stream data; other fields are skipped), and what we send is one
//! field 1 per message, valid as either.
//!
//! Paths as xray derives them from `serviceName`: a plain name `n` serves `/n/Tun` and
//! `/n/TunMulti` (the name path-escaped); a name starting with `/` is a custom path
//! `/a/b/Tun|Multi` serving `/a/b/Tun` and `/a/b/Multi` (without `|`, the last segment names
//! both). A request for another path, or not gRPC, gets gRPC's trailers-only "unimplemented"
//! answer and the connection is closed.

pub mod h2;

use v2sp_shared::dpconfig::GrpcSettings;

use self::h2::{DataSink, Fed, H2Conn};
use super::{TransportHandshake, Upgrade, Upgraded};
use crate::{StreamCodec, WireError};

/// Largest gRPC message accepted (grpc-go's default receive limit); payload is streamed.
pub const MAX_MESSAGE: u32 = 4 << 20;

/// Go's `url.PathEscape`: unreserved bytes and `$&+:=@` stay, the rest is `%XX`.
pub fn path_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~$&+:=@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request paths xray's gRPC server answers for `service_name`: (Tun, TunMulti).
pub fn paths(service_name: &str) -> (String, String) {
    let Some(custom) = service_name.strip_prefix('/') else {
        let s = path_escape(service_name);
        return (format!("/{s}/Tun"), format!("/{s}/TunMulti"));
    };
    // `/a/b/Tun|Multi`: the service is what lies between the first and the last '/'.
    let last = service_name.rfind('/').unwrap_or(0).max(1);
    let service = custom
        .get(..last - 1)
        .unwrap_or_default()
        .split('/')
        .map(path_escape)
        .collect::<Vec<_>>()
        .join("/");
    let ending = service_name
        .get(service_name.rfind('/').map_or(0, |i| i + 1)..)
        .unwrap_or_default();
    let mut names = ending.split('|');
    let tun = path_escape(names.next().unwrap_or_default());
    let multi = names.next().map_or_else(|| tun.clone(), path_escape);
    (format!("/{service}/{tun}"), format!("/{service}/{multi}"))
}

/// Streaming reader of gRPC messages holding Hunk/MultiHunk: field-1 bytes out.
#[derive(Default)]
pub struct GunReader {
    state: GunState,
    /// Bytes of the current message not yet read (after its prefix).
    msg_left: u32,
}

#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
enum GunState {
    /// The 5-byte message prefix, `n` bytes of it read into `buf`.
    #[default]
    Prefix,
    /// A field key varint.
    Key,
    /// A length varint; the field's bytes are emitted when `emit`.
    Len { emit: bool },
    /// A varint field being skipped.
    SkipVarint,
    /// Field bytes: `left` to go.
    Bytes { left: u32, emit: bool },
}

/// Partial varint / prefix accumulation.
#[derive(Default)]
struct Acc {
    buf: [u8; 5],
    n: u8,
    val: u64,
    shift: u32,
}

/// The sink for [`H2Conn`]: gun messages in, stream bytes out.
struct Sink<'a> {
    gun: &'a mut GunReader,
    acc: &'a mut Acc,
    out: &'a mut Vec<u8>,
}

impl DataSink for Sink<'_> {
    fn data(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        self.gun.feed(self.acc, bytes, self.out)
    }
}

impl GunReader {
    fn feed(&mut self, acc: &mut Acc, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        // Bounded: every pass consumes at least one byte.
        while let Some((&b, rest)) = data.split_first() {
            match self.state {
                GunState::Prefix => {
                    if let Some(slot) = acc.buf.get_mut(usize::from(acc.n)) {
                        *slot = b;
                    }
                    acc.n += 1;
                    data = rest;
                    if acc.n == 5 {
                        acc.n = 0;
                        if acc.buf[0] != 0 {
                            return Err(WireError::Unsupported("grpc: compressed message"));
                        }
                        let len = u32::from_be_bytes([acc.buf[1], acc.buf[2], acc.buf[3], acc.buf[4]]);
                        if len > MAX_MESSAGE {
                            return Err(WireError::Malformed("grpc: message larger than 4 MiB"));
                        }
                        self.msg_left = len;
                        if len > 0 {
                            self.state = GunState::Key;
                        }
                    }
                }
                GunState::Key | GunState::Len { .. } | GunState::SkipVarint => {
                    self.take_msg_byte()?;
                    data = rest;
                    if acc.shift >= 63 {
                        return Err(WireError::Malformed("grpc: protobuf varint too long"));
                    }
                    acc.val |= u64::from(b & 0x7F) << acc.shift;
                    acc.shift += 7;
                    if b & 0x80 != 0 {
                        continue;
                    }
                    let v = acc.val;
                    acc.val = 0;
                    acc.shift = 0;
                    self.state = match self.state {
                        GunState::Key => match (v >> 3, v & 7) {
                            (0, _) => return Err(WireError::Malformed("grpc: protobuf field 0")),
                            (f, 2) => GunState::Len { emit: f == 1 },
                            (_, 0) => GunState::SkipVarint,
                            (_, 1) => GunState::Bytes { left: 8, emit: false },
                            (_, 5) => GunState::Bytes { left: 4, emit: false },
                            _ => return Err(WireError::Malformed("grpc: protobuf wire type not in a Hunk")),
                        },
                        GunState::Len { emit } => {
                            let left = u32::try_from(v).ok().filter(|&l| l <= self.msg_left).ok_or(
                                WireError::Malformed("grpc: protobuf field longer than its message"),
                            )?;
                            GunState::Bytes { left, emit }
                        }
                        _ => GunState::Key,
                    };
                    self.field_done();
                }
                GunState::Bytes { left, emit } => {
                    let n = (left as usize).min(data.len());
                    let (chunk, tail) = data.split_at(n);
                    if emit {
                        out.extend_from_slice(chunk);
                    }
                    data = tail;
                    // `left <= msg_left` was checked when the field started.
                    self.msg_left -= n as u32;
                    self.state = GunState::Bytes {
                        left: left - n as u32,
                        emit,
                    };
                    self.field_done();
                }
            }
        }
        Ok(())
    }

    fn take_msg_byte(&mut self) -> Result<(), WireError> {
        self.msg_left = self.msg_left.checked_sub(1).ok_or(WireError::Malformed(
            "grpc: protobuf field cut by its message's end",
        ))?;
        Ok(())
    }

    /// After a field part: a finished field at the message's end starts the next message.
    fn field_done(&mut self) {
        if let GunState::Bytes { left: 0, .. } = self.state {
            self.state = GunState::Key;
        }
        if self.state == GunState::Key && self.msg_left == 0 {
            self.state = GunState::Prefix;
        }
    }
}

/// Appends one gRPC message carrying `data` as a Hunk (field 1), valid as a MultiHunk too.
pub fn write_message(data: &[u8], out: &mut Vec<u8>) {
    let mut varint = [0u8; 10];
    let mut vn = 0;
    let mut v = data.len() as u64;
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if let Some(slot) = varint.get_mut(vn) {
            *slot = if v == 0 { b } else { b | 0x80 };
        }
        vn += 1;
        if v == 0 {
            break;
        }
    }
    let len = 1 + vn + data.len();
    out.reserve(5 + len);
    out.push(0);
    out.extend_from_slice(&(len.min(u32::MAX as usize) as u32).to_be_bytes());
    out.push(0x0A);
    out.extend_from_slice(varint.get(..vn).unwrap_or_default());
    out.extend_from_slice(data);
}

/// The gun request stage: preface, settings, the request's headers.
pub struct GrpcHandshake {
    conn: Option<H2Conn>,
    tun: String,
    multi: String,
}

impl GrpcHandshake {
    pub fn new(cfg: &GrpcSettings) -> Self {
        let (tun, multi) = paths(&cfg.service_name);
        GrpcHandshake {
            conn: Some(H2Conn::default()),
            tun,
            multi,
        }
    }
}

/// gRPC's answer to a call it does not serve: trailers-only, status 12 (UNIMPLEMENTED).
fn unimplemented(stream: u32, out: &mut Vec<u8>) {
    let mut block = Vec::new();
    h2::response_block(&mut block);
    h2::hpack_literal(&mut block, b"grpc-status", b"12");
    h2::hpack_literal(&mut block, b"grpc-message", b"unknown service");
    h2::frame(
        out,
        h2::T_HEADERS,
        h2::F_END_HEADERS | h2::F_END_STREAM,
        stream,
        &block,
    );
}

impl TransportHandshake for GrpcHandshake {
    fn feed(&mut self, data: &[u8]) -> Result<Upgrade, WireError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(WireError::Malformed("grpc: handshake fed after it finished"));
        };
        let mut none = NoData;
        let used = match conn.feed(data, &mut none) {
            Ok(Fed::All) if conn.flooded() => {
                // Our SETTINGS, then GOAWAY ENHANCE_YOUR_CALM (and what was queued before it).
                let mut reply = Vec::new();
                h2::server_preface(&mut reply);
                conn.take_control(&mut reply);
                return Ok(Upgrade::Reject(reply));
            }
            Ok(Fed::All) => return Ok(Upgrade::NeedMore),
            Ok(Fed::Request(n)) => n,
            // Not HTTP/2 (or broken): closed without a word, like xray's gRPC server.
            Err(_) => return Ok(Upgrade::Reject(Vec::new())),
        };
        let headers = conn.take_request().unwrap_or_default();
        let get = |name: &[u8]| {
            headers
                .iter()
                .find(|(n, _)| n.as_slice() == name)
                .map(|(_, v)| v.as_slice())
        };
        let path = get(b":path").unwrap_or_default();
        let gun = get(b":method") == Some(b"POST")
            && (path == self.tun.as_bytes() || path == self.multi.as_bytes())
            && get(b"content-type").is_some_and(|c| c.starts_with(b"application/grpc"));
        let mut reply = Vec::new();
        h2::server_preface(&mut reply);
        conn.take_control(&mut reply);
        if !gun {
            unimplemented(conn.stream(), &mut reply);
            return Ok(Upgrade::Reject(reply));
        }
        let mut block = Vec::new();
        h2::response_block(&mut block);
        h2::frame(
            &mut reply,
            h2::T_HEADERS,
            h2::F_END_HEADERS,
            conn.stream(),
            &block,
        );
        let rest = data.get(used..).unwrap_or_default().to_vec();
        let conn = self.conn.take().unwrap_or_default();
        Ok(Upgrade::Done(Upgraded {
            reply,
            early: Vec::new(),
            rest,
            framing: Some(Box::new(GrpcCodec {
                conn,
                gun: GunReader::default(),
                acc: Acc::default(),
                trailers_sent: false,
            })),
        }))
    }
}

/// Before the request, DATA cannot belong to the served stream.
struct NoData;

impl DataSink for NoData {
    fn data(&mut self, _: &[u8]) -> Result<(), WireError> {
        Err(WireError::Malformed("grpc: DATA before the request"))
    }
}

/// The gun stream after the request: DATA in, DATA out, HTTP/2 housekeeping on the side.
pub struct GrpcCodec {
    conn: H2Conn,
    gun: GunReader,
    acc: Acc,
    trailers_sent: bool,
}

impl GrpcCodec {
    /// The connection state (tests).
    pub fn conn(&self) -> &H2Conn {
        &self.conn
    }
}

impl StreamCodec for GrpcCodec {
    fn open(&mut self, wire: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let mut sink = Sink {
            gun: &mut self.gun,
            acc: &mut self.acc,
            out,
        };
        match self.conn.feed(wire, &mut sink)? {
            Fed::All => Ok(wire.len()),
            // A second request on this connection was refused inside; cannot happen here.
            Fed::Request(_) => Err(WireError::Malformed("grpc: unexpected second request")),
        }
    }

    fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        // Pending control frames first (acks, window updates), then the data.
        self.conn.take_control(out);
        let mut msg = Vec::with_capacity(plain.len() + 16);
        write_message(plain, &mut msg);
        self.conn.send(&msg, out)
    }

    fn has_control(&self) -> bool {
        self.conn.has_control()
    }

    fn take_control(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.conn.take_control(out);
        Ok(())
    }

    fn output_over_budget(&self) -> bool {
        self.conn.output_over_budget()
    }

    fn send_blocked(&self) -> bool {
        self.conn.held() > 0
    }

    fn input_ended(&self) -> bool {
        self.conn.remote_closed
    }

    /// The call's trailers, `grpc-status: 0` with END_STREAM: what a gun server sends when
    /// the tunnel ends cleanly (the relay calls this only with nothing held).
    fn close_output(&mut self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.trailers_sent || self.conn.stream() == 0 {
            return Ok(());
        }
        self.trailers_sent = true;
        let mut block = Vec::new();
        h2::hpack_literal(&mut block, b"grpc-status", b"0");
        h2::frame(
            out,
            h2::T_HEADERS,
            h2::F_END_HEADERS | h2::F_END_STREAM,
            self.conn.stream(),
            &block,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests;
