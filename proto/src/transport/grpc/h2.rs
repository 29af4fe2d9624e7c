//! A minimal sans-IO HTTP/2 server connection (RFC 9113) for one request stream: what a gun
//! (gRPC tunnel) client needs and nothing more.
//!
//! ```text
//! frame: | length u24 | type u8 | flags u8 | R | stream id u31 | payload (length bytes) |
//! client: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" SETTINGS, then HEADERS(+CONTINUATION) on stream 1,
//!         DATA on it, WINDOW_UPDATE / PING / SETTINGS at any time
//! server: SETTINGS (+ACK of the client's), HEADERS :status 200, DATA ...
//! ```
//!
//! Handled: the client preface, SETTINGS (acknowledged; INITIAL_WINDOW_SIZE and
//! MAX_FRAME_SIZE applied), PING (answered), WINDOW_UPDATE, HEADERS/CONTINUATION (HPACK
//! decoded, dynamic table kept in step), DATA (padding stripped), RST_STREAM and GOAWAY
//! (with an error code) end the connection. PRIORITY and unknown frame types are ignored.
//! Streams after the first are refused (RST_STREAM REFUSED_STREAM).
//!
//! Flow control both ways: DATA is consumed as it arrives (the relay writes it on before it
//! reads more), so every byte received is given back with WINDOW_UPDATE (connection and
//! stream) once half a window is used; DATA we send never exceeds the client's windows or
//! frame size: what does not fit is held until the client's WINDOW_UPDATE opens the window.
//!
//! What a client can make us hold or do is bounded:
//! * header lists: SETTINGS_MAX_HEADER_LIST_SIZE ([`MAX_HEADER_LIST`]) is advertised and
//!   enforced *while* HPACK decodes, one field at a time, so a block that references a large
//!   table entry over and over (an HPACK bomb: 64 KiB → 235 MiB) stops after 16 KiB; a header
//!   block is at most [`MAX_HEADER_BLOCK`] bytes in at most [`MAX_BLOCK_FRAMES`] frames; the
//!   HPACK table we advertise is [`HPACK_TABLE_ADVERTISED`] bytes (applied once acknowledged).
//! * floods: frames that carry nothing for the tunnel (SETTINGS, PINGs and WINDOW_UPDATEs not
//!   matched by DATA, RST_STREAM, PRIORITY, unknown types, refused HEADERS, empty DATA) count
//!   against [`FLOOD_FRAMES`] per [`FLOOD_WINDOW`]; past it the client gets GOAWAY
//!   ENHANCE_YOUR_CALM and the connection ends.
//! * replies: control frames queued for a client that does not read put the codec over its
//!   output budget ([`CONTROL_BUDGET`]), and the relay stops reading from it.

use loona_hpack::Decoder;

use crate::WireError;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const T_DATA: u8 = 0;
pub const T_HEADERS: u8 = 1;
pub const T_PRIORITY: u8 = 2;
pub const T_RST_STREAM: u8 = 3;
pub const T_SETTINGS: u8 = 4;
pub const T_PUSH_PROMISE: u8 = 5;
pub const T_PING: u8 = 6;
pub const T_GOAWAY: u8 = 7;
pub const T_WINDOW_UPDATE: u8 = 8;
pub const T_CONTINUATION: u8 = 9;

pub const F_END_STREAM: u8 = 0x1;
pub const F_ACK: u8 = 0x1;
pub const F_END_HEADERS: u8 = 0x4;
pub const F_PADDED: u8 = 0x8;
pub const F_PRIORITY: u8 = 0x20;

const S_HEADER_TABLE_SIZE: u16 = 0x1;
const S_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const S_INITIAL_WINDOW_SIZE: u16 = 0x4;
const S_MAX_FRAME_SIZE: u16 = 0x5;
const S_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// RST_STREAM error code for a stream we will not serve.
pub const REFUSED_STREAM: u32 = 0x7;
/// GOAWAY error code for a client that floods us.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// RFC 9113 defaults.
pub const DEFAULT_WINDOW: u32 = 65_535;
pub const DEFAULT_MAX_FRAME: u32 = 16_384;
const MAX_WINDOW: i64 = (1 << 31) - 1;

/// Largest frame payload we accept (the default: we do not advertise more).
pub const RECV_MAX_FRAME: u32 = DEFAULT_MAX_FRAME;
/// Receive window we advertise for the stream (SETTINGS_INITIAL_WINDOW_SIZE) and raise the
/// connection's to.
pub const RECV_WINDOW: u32 = 1 << 20;
/// Largest header block (HEADERS + CONTINUATION) accepted.
pub const MAX_HEADER_BLOCK: usize = 16 * 1024;
/// Most frames (HEADERS + CONTINUATIONs) in one header block.
pub const MAX_BLOCK_FRAMES: usize = 16;
/// Largest decoded header list (RFC 9113 §6.5.2: names, values and 32 bytes per field),
/// advertised as SETTINGS_MAX_HEADER_LIST_SIZE; a gun request's is ~300 bytes.
pub const MAX_HEADER_LIST: usize = 16 * 1024;
/// Frames that carry nothing for the tunnel accepted per [`FLOOD_WINDOW`].
pub const FLOOD_FRAMES: u32 = 1024;
pub const FLOOD_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);
/// Control bytes (acks, refusals, window updates) queued for the client past which the relay
/// stops reading from it until they are sent.
pub const CONTROL_BUDGET: usize = 16 * 1024;
/// Most bytes held for a client whose windows stay closed (the relay stops reading at one
/// read's worth; datagram streams may queue more) before the connection is dropped.
pub const MAX_HELD: usize = 4 << 20;
/// Most control bytes (acks, updates, refusals, released DATA) waiting for a client that does
/// not read them.
pub const MAX_CONTROL: usize = MAX_HELD + (1 << 20);
/// HPACK dynamic table size until the client acknowledged our settings (the default).
const HPACK_TABLE: usize = 4096;
/// HPACK dynamic table size we advertise (SETTINGS_HEADER_TABLE_SIZE), applied to the
/// decoder once the client acknowledged it.
pub const HPACK_TABLE_ADVERTISED: usize = 1024;

/// Appends a frame header.
pub fn frame_header(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream: u32) {
    let len = len.min(0xFF_FFFF) as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7FFF_FFFF).to_be_bytes());
}

/// Appends a whole frame.
pub fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    frame_header(out, payload.len(), ty, flags, stream);
    out.extend_from_slice(payload);
}

/// The server's connection preface: SETTINGS (HPACK table, one stream, our stream window,
/// header list limit) and a WINDOW_UPDATE raising the connection window to the same size.
pub fn server_preface(out: &mut Vec<u8>) {
    let mut s = Vec::with_capacity(24);
    for (id, v) in [
        (S_HEADER_TABLE_SIZE, HPACK_TABLE_ADVERTISED as u32),
        (S_MAX_CONCURRENT_STREAMS, 1),
        (S_INITIAL_WINDOW_SIZE, RECV_WINDOW),
        (S_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST as u32),
    ] {
        s.extend_from_slice(&id.to_be_bytes());
        s.extend_from_slice(&v.to_be_bytes());
    }
    frame(out, T_SETTINGS, 0, 0, &s);
    frame(
        out,
        T_WINDOW_UPDATE,
        0,
        0,
        &(RECV_WINDOW - DEFAULT_WINDOW).to_be_bytes(),
    );
}

/// Appends an HPACK string literal without Huffman coding.
fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// Appends an HPACK integer with an `n`-bit prefix, `first` holding the pattern bits.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    let mut v = v - max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Appends a header field as a literal without indexing with a new name (RFC 7541 §6.2.2).
pub fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_str(out, name);
    hpack_str(out, value);
}

/// Header block `:status: 200`, `content-type: application/grpc` (static table entries 8
/// and 31, the latter as a literal without indexing).
pub fn response_block(out: &mut Vec<u8>) {
    out.push(0x88);
    hpack_int(out, 0x00, 4, 31);
    hpack_str(out, b"application/grpc");
}

struct Head {
    len: u32,
    ty: u8,
    flags: u8,
    stream: u32,
}

/// The DATA frame being read (payload streamed, not buffered).
struct DataFrame {
    /// Still to read: the pad length byte.
    need_pad_len: bool,
    data_left: u32,
    pad_left: u32,
    /// Payload belongs to the served stream (else it is dropped).
    ours: bool,
    end_stream: bool,
}

/// What one call to [`H2Conn::feed`] ended on.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// All input consumed.
    All,
    /// The request's headers are complete after `n` bytes; the rest is not consumed yet.
    Request(usize),
}

/// Server side of one HTTP/2 connection serving a single stream.
pub struct H2Conn {
    preface: usize,
    hdr: [u8; 9],
    hdr_len: usize,
    /// A non-DATA frame being collected.
    cur: Option<Head>,
    payload: Vec<u8>,
    data: Option<DataFrame>,
    /// Header block being collected (HEADERS then CONTINUATIONs), its stream and END_STREAM.
    block: Vec<u8>,
    block_stream: u32,
    block_end_stream: bool,
    in_block: bool,
    hpack: Decoder<'static>,
    /// The served stream (0 until its HEADERS arrive).
    stream: u32,
    /// Request headers of the served stream, until taken.
    request: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// The request has been handed out: DATA flows.
    accepted: bool,
    /// The client ended its side of the stream (END_STREAM).
    pub remote_closed: bool,
    /// Bytes consumed and not yet given back with WINDOW_UPDATE.
    unacked_conn: u32,
    unacked_stream: u32,
    /// What the client may still send us.
    recv_conn: i64,
    recv_stream: i64,
    /// The client's settings and windows for what we send.
    peer_initial: u32,
    peer_max_frame: u32,
    send_conn: i64,
    send_stream: i64,
    /// DATA payload sealed but not yet sent (window closed); `held[held_off..]` is pending.
    held: Vec<u8>,
    held_off: usize,
    /// Frames for the client (acks, window updates, refusals, released DATA).
    control: Vec<u8>,
    /// Bytes of non-DATA frames in `control` (what [`CONTROL_BUDGET`] bounds).
    control_frames: usize,
    /// Frames in the header block being collected.
    block_frames: usize,
    /// SETTINGS ACKs received (the first acknowledges ours).
    settings_acks: u32,
    /// Frames that carried nothing for the tunnel in the current flood window.
    flood: Flood,
    /// The client flooded us: GOAWAY is queued, further input is an error.
    flooded: bool,
    /// DATA payload sent on the connection / stream not yet matched by the client's
    /// WINDOW_UPDATEs (a WINDOW_UPDATE beyond it counts towards the flood limit).
    credit_conn: u64,
    credit_stream: u64,
    /// DATA moved (either way) since the client's last PING.
    data_since_ping: bool,
}

/// Counts frames per [`FLOOD_WINDOW`].
#[derive(Default)]
struct Flood {
    start: Option<std::time::Instant>,
    frames: u32,
}

impl Flood {
    /// Counts one frame at `now`; true once the window holds more than [`FLOOD_FRAMES`].
    fn count(&mut self, now: std::time::Instant) -> bool {
        match self.start {
            Some(t) if now.saturating_duration_since(t) < FLOOD_WINDOW => {}
            _ => {
                self.start = Some(now);
                self.frames = 0;
            }
        }
        self.frames += 1;
        self.frames > FLOOD_FRAMES
    }
}

impl Default for H2Conn {
    fn default() -> Self {
        let mut hpack = Decoder::new();
        hpack.set_max_allowed_table_size(HPACK_TABLE);
        H2Conn {
            preface: 0,
            hdr: [0; 9],
            hdr_len: 0,
            cur: None,
            payload: Vec::new(),
            data: None,
            block: Vec::new(),
            block_stream: 0,
            block_end_stream: false,
            in_block: false,
            hpack,
            stream: 0,
            request: None,
            accepted: false,
            remote_closed: false,
            unacked_conn: 0,
            unacked_stream: 0,
            recv_conn: i64::from(RECV_WINDOW),
            recv_stream: i64::from(RECV_WINDOW),
            peer_initial: DEFAULT_WINDOW,
            peer_max_frame: DEFAULT_MAX_FRAME,
            send_conn: i64::from(DEFAULT_WINDOW),
            send_stream: i64::from(DEFAULT_WINDOW),
            held: Vec::new(),
            held_off: 0,
            control: Vec::new(),
            control_frames: 0,
            block_frames: 0,
            settings_acks: 0,
            flood: Flood::default(),
            flooded: false,
            credit_conn: 0,
            credit_stream: 0,
            data_since_ping: false,
        }
    }
}

/// Streams gun payload out of DATA: the caller's sink for the served stream's bytes.
pub trait DataSink {
    fn data(&mut self, bytes: &[u8]) -> Result<(), WireError>;
}

impl H2Conn {
    /// The served stream's id (0 before its request).
    pub fn stream(&self) -> u32 {
        self.stream
    }

    /// Takes the request headers once they are complete; DATA is delivered from then on.
    pub fn take_request(&mut self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let r = self.request.take();
        if r.is_some() {
            self.accepted = true;
        }
        r
    }

    /// Bytes held back by the client's flow control.
    pub fn held(&self) -> usize {
        self.held.len() - self.held_off
    }

    /// The client's send windows (connection, stream), for tests.
    pub fn send_windows(&self) -> (i64, i64) {
        (self.send_conn, self.send_stream)
    }

    /// Whether frames wait for the client (acks, window updates, refusals, released DATA).
    pub fn has_control(&self) -> bool {
        !self.control.is_empty()
    }

    /// Appends the frames waiting for the client to `out`.
    pub fn take_control(&mut self, out: &mut Vec<u8>) {
        if out.is_empty() {
            std::mem::swap(out, &mut self.control);
        } else {
            out.append(&mut self.control);
        }
        self.control_frames = 0;
    }

    /// Whether the relay should stop reading from the client until the queued control frames
    /// are sent: over [`CONTROL_BUDGET`], or a GOAWAY that must leave before the end.
    pub fn output_over_budget(&self) -> bool {
        self.control_frames > CONTROL_BUDGET || (self.flooded && self.has_control())
    }

    /// Whether the client flooded us (GOAWAY ENHANCE_YOUR_CALM queued).
    pub fn flooded(&self) -> bool {
        self.flooded
    }

    /// Queues a frame that is not DATA for the client.
    fn queue(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        frame(&mut self.control, ty, flags, stream, payload);
        self.control_frames += 9 + payload.len();
    }

    /// Counts a frame that carried nothing for the tunnel; past the limit, the connection
    /// ends with GOAWAY ENHANCE_YOUR_CALM.
    fn idle_frame(&mut self) {
        if self.flooded || !self.flood.count(std::time::Instant::now()) {
            return;
        }
        self.flooded = true;
        let mut p = [0u8; 8];
        p[..4].copy_from_slice(&self.stream.to_be_bytes());
        p[4..].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        self.queue(T_GOAWAY, 0, 0, &p);
    }

    /// Moves the flood window's start back (tests: time passing without a clock).
    #[cfg(test)]
    pub fn age_flood_window(&mut self) {
        self.flood.start = self.flood.start.and_then(|t| t.checked_sub(FLOOD_WINDOW));
    }

    /// Feeds client bytes; DATA of the served stream goes to `sink`. Stops right after the
    /// request's header block until [`H2Conn::take_request`] is called.
    pub fn feed(&mut self, wire: &[u8], sink: &mut dyn DataSink) -> Result<Fed, WireError> {
        if self.flooded && !self.has_control() && !wire.is_empty() {
            // GOAWAY has left: nothing more is read.
            return Err(WireError::Malformed("grpc: control frame flood"));
        }
        let mut pos = 0usize;
        // Bounded: every pass consumes at least one byte or returns.
        while pos < wire.len() {
            if self.request.is_some() {
                return Ok(Fed::Request(pos));
            }
            if self.flooded {
                // The rest is ignored; GOAWAY goes out first, then the connection ends.
                return Ok(Fed::All);
            }
            let rest = wire.get(pos..).unwrap_or_default();
            if self.preface < PREFACE.len() {
                let want = PREFACE.get(self.preface..).unwrap_or_default();
                let n = want.len().min(rest.len());
                if rest.get(..n) != want.get(..n) {
                    return Err(WireError::Malformed("grpc: not an HTTP/2 client preface"));
                }
                self.preface += n;
                pos += n;
                continue;
            }
            if let Some(d) = self.data.as_mut() {
                pos += Self::data_bytes(d, rest, sink)?;
                if d.need_pad_len || d.data_left > 0 || d.pad_left > 0 {
                    continue;
                }
                let end = d.ours && d.end_stream;
                self.data = None;
                if end {
                    self.remote_closed = true;
                }
                continue;
            }
            if let Some(h) = self.cur.as_ref() {
                let need = (h.len as usize).saturating_sub(self.payload.len());
                let n = need.min(rest.len());
                self.payload.extend_from_slice(rest.get(..n).unwrap_or_default());
                pos += n;
                if self.payload.len() >= h.len as usize {
                    self.finish_frame()?;
                }
                continue;
            }
            let n = (9 - self.hdr_len).min(rest.len());
            if let Some(dst) = self.hdr.get_mut(self.hdr_len..self.hdr_len + n) {
                dst.copy_from_slice(rest.get(..n).unwrap_or_default());
            }
            self.hdr_len += n;
            pos += n;
            if self.hdr_len == 9 {
                self.hdr_len = 0;
                self.start_frame()?;
            }
            if self.control.len() > MAX_CONTROL {
                return Err(WireError::Malformed(
                    "grpc: client does not read our control frames",
                ));
            }
        }
        if self.request.is_some() {
            return Ok(Fed::Request(pos));
        }
        self.give_back();
        Ok(Fed::All)
    }

    /// Reads DATA payload bytes from `rest`; returns how many were consumed.
    fn data_bytes(d: &mut DataFrame, rest: &[u8], sink: &mut dyn DataSink) -> Result<usize, WireError> {
        let mut used = 0usize;
        if d.need_pad_len {
            let Some(&p) = rest.first() else { return Ok(0) };
            used = 1;
            d.need_pad_len = false;
            if u32::from(p) > d.data_left {
                return Err(WireError::Malformed("grpc: DATA padding longer than the frame"));
            }
            d.pad_left = u32::from(p);
            d.data_left -= u32::from(p);
        }
        let rest = rest.get(used..).unwrap_or_default();
        let n = (d.data_left as usize).min(rest.len());
        if n > 0 {
            if d.ours {
                sink.data(rest.get(..n).unwrap_or_default())?;
            }
            d.data_left -= n as u32;
            used += n;
        }
        let rest = rest.get(n..).unwrap_or_default();
        if d.data_left == 0 {
            let p = (d.pad_left as usize).min(rest.len());
            d.pad_left -= p as u32;
            used += p;
        }
        Ok(used)
    }

    fn start_frame(&mut self) -> Result<(), WireError> {
        let b = self.hdr;
        let len = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        let ty = b[3];
        let flags = b[4];
        let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7FFF_FFFF;
        if len > RECV_MAX_FRAME {
            return Err(WireError::Malformed(
                "grpc: HTTP/2 frame larger than SETTINGS_MAX_FRAME_SIZE",
            ));
        }
        if self.in_block && (ty != T_CONTINUATION || stream != self.block_stream) {
            return Err(WireError::Malformed("grpc: header block interrupted"));
        }
        if ty == T_DATA {
            if stream == 0 {
                return Err(WireError::Malformed("grpc: DATA on stream 0"));
            }
            let ours = stream == self.stream && self.accepted && !self.remote_closed;
            if !ours && stream == self.stream && self.remote_closed {
                return Err(WireError::Malformed("grpc: DATA after END_STREAM"));
            }
            // Flow control counts the whole payload, padding included.
            self.recv_conn -= i64::from(len);
            if ours {
                self.recv_stream -= i64::from(len);
            }
            if self.recv_conn < 0 || self.recv_stream < 0 {
                return Err(WireError::Malformed(
                    "grpc: client exceeded the flow-control window",
                ));
            }
            self.unacked_conn += len;
            if ours {
                self.unacked_stream += len;
            }
            let padded = flags & F_PADDED != 0;
            if padded && len == 0 {
                return Err(WireError::Malformed("grpc: padded DATA without a pad length"));
            }
            if !ours || (len == 0 && flags & F_END_STREAM == 0) {
                // DATA for no stream of ours, or empty and not ending the stream.
                self.idle_frame();
            } else {
                self.data_since_ping = true;
            }
            let d = DataFrame {
                need_pad_len: padded,
                data_left: if padded { len - 1 } else { len },
                pad_left: 0,
                ours,
                end_stream: flags & F_END_STREAM != 0,
            };
            if d.data_left == 0 && !d.need_pad_len {
                if d.ours && d.end_stream {
                    self.remote_closed = true;
                }
            } else {
                self.data = Some(d);
            }
            return Ok(());
        }
        self.payload.clear();
        self.cur = Some(Head {
            len,
            ty,
            flags,
            stream,
        });
        if len == 0 {
            self.finish_frame()?;
        }
        Ok(())
    }

    fn finish_frame(&mut self) -> Result<(), WireError> {
        let Some(h) = self.cur.take() else {
            return Ok(());
        };
        let p = std::mem::take(&mut self.payload);
        let r = self.frame(&h, &p);
        self.payload = p;
        self.payload.clear();
        if self.payload.capacity() > RECV_MAX_FRAME as usize + 64 {
            self.payload = Vec::new();
        }
        r
    }

    fn frame(&mut self, h: &Head, p: &[u8]) -> Result<(), WireError> {
        match h.ty {
            T_HEADERS => {
                if h.stream == 0 {
                    return Err(WireError::Malformed("grpc: HEADERS on stream 0"));
                }
                let mut body = p;
                if h.flags & F_PADDED != 0 {
                    let (&pad, rest) = body
                        .split_first()
                        .ok_or(WireError::Malformed("grpc: HEADERS without a pad length"))?;
                    let keep = rest
                        .len()
                        .checked_sub(usize::from(pad))
                        .ok_or(WireError::Malformed(
                            "grpc: HEADERS padding longer than the frame",
                        ))?;
                    body = rest.get(..keep).unwrap_or_default();
                }
                if h.flags & F_PRIORITY != 0 {
                    body = body
                        .get(5..)
                        .ok_or(WireError::Malformed("grpc: HEADERS priority truncated"))?;
                }
                self.block.clear();
                self.block.extend_from_slice(body);
                self.block_frames = 1;
                self.block_stream = h.stream;
                self.block_end_stream = h.flags & F_END_STREAM != 0;
                self.in_block = true;
                if h.flags & F_END_HEADERS != 0 {
                    self.end_block()?;
                }
            }
            T_CONTINUATION => {
                if !self.in_block {
                    return Err(WireError::Malformed("grpc: CONTINUATION without HEADERS"));
                }
                if self.block.len() + p.len() > MAX_HEADER_BLOCK {
                    return Err(WireError::Malformed("grpc: header block too large"));
                }
                self.block_frames += 1;
                if self.block_frames > MAX_BLOCK_FRAMES {
                    return Err(WireError::Malformed("grpc: header block in too many frames"));
                }
                self.block.extend_from_slice(p);
                if h.flags & F_END_HEADERS != 0 {
                    self.end_block()?;
                }
            }
            T_SETTINGS => {
                if h.stream != 0 {
                    return Err(WireError::Malformed("grpc: SETTINGS on a stream"));
                }
                if h.flags & F_ACK != 0 {
                    if !p.is_empty() {
                        return Err(WireError::Malformed("grpc: SETTINGS ACK with a payload"));
                    }
                    self.settings_acks += 1;
                    if self.settings_acks == 1 {
                        // Our SETTINGS_HEADER_TABLE_SIZE is in force: the client's encoder
                        // keeps its table within it from its next header block on.
                        self.hpack.set_max_allowed_table_size(HPACK_TABLE_ADVERTISED);
                        self.hpack.set_max_table_size(HPACK_TABLE_ADVERTISED);
                    } else {
                        self.idle_frame();
                    }
                    return Ok(());
                }
                self.idle_frame();
                if self.flooded {
                    return Ok(());
                }
                if !p.len().is_multiple_of(6) {
                    return Err(WireError::Malformed("grpc: SETTINGS length not a multiple of 6"));
                }
                for s in p.chunks_exact(6) {
                    let id = u16::from_be_bytes([s[0], s[1]]);
                    let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    match id {
                        S_INITIAL_WINDOW_SIZE => {
                            if i64::from(v) > MAX_WINDOW {
                                return Err(WireError::Malformed(
                                    "grpc: SETTINGS_INITIAL_WINDOW_SIZE too large",
                                ));
                            }
                            let delta = i64::from(v) - i64::from(self.peer_initial);
                            self.peer_initial = v;
                            if self.stream != 0 {
                                self.send_stream += delta;
                                if self.send_stream > MAX_WINDOW {
                                    return Err(WireError::Malformed("grpc: stream window overflow"));
                                }
                            } else {
                                self.send_stream = i64::from(v);
                            }
                        }
                        S_MAX_FRAME_SIZE => {
                            if !(DEFAULT_MAX_FRAME..=0xFF_FFFF).contains(&v) {
                                return Err(WireError::Malformed(
                                    "grpc: SETTINGS_MAX_FRAME_SIZE out of range",
                                ));
                            }
                            self.peer_max_frame = v;
                        }
                        // Our encoder never indexes, so the client's table size does not matter.
                        S_HEADER_TABLE_SIZE => {}
                        _ => {}
                    }
                }
                self.queue(T_SETTINGS, F_ACK, 0, &[]);
                self.release();
            }
            T_PING => {
                if h.stream != 0 || p.len() != 8 {
                    return Err(WireError::Malformed("grpc: bad PING"));
                }
                // Keepalive and BDP pings come with traffic or seconds apart; an ACK answers
                // nothing of ours (we never ping).
                if h.flags & F_ACK != 0 || !std::mem::take(&mut self.data_since_ping) {
                    self.idle_frame();
                }
                if h.flags & F_ACK == 0 && !self.flooded {
                    self.queue(T_PING, F_ACK, 0, p);
                }
            }
            T_WINDOW_UPDATE => {
                let b: [u8; 4] = p
                    .try_into()
                    .map_err(|_| WireError::Malformed("grpc: WINDOW_UPDATE length not 4"))?;
                let inc = i64::from(u32::from_be_bytes(b) & 0x7FFF_FFFF);
                if inc == 0 {
                    return Err(WireError::Malformed("grpc: WINDOW_UPDATE of 0"));
                }
                // An update that gives back DATA we sent is traffic; one beyond it (or for a
                // stream not ours) carries nothing.
                let credit = match h.stream {
                    0 => Some(&mut self.credit_conn),
                    s if s == self.stream => Some(&mut self.credit_stream),
                    _ => None,
                };
                let matched = match credit {
                    Some(c) if *c > 0 => {
                        *c = c.saturating_sub(inc as u64);
                        true
                    }
                    _ => false,
                };
                if !matched {
                    self.idle_frame();
                }
                if h.stream == 0 {
                    self.send_conn += inc;
                    if self.send_conn > MAX_WINDOW {
                        return Err(WireError::Malformed("grpc: connection window overflow"));
                    }
                } else if h.stream == self.stream {
                    self.send_stream += inc;
                    if self.send_stream > MAX_WINDOW {
                        return Err(WireError::Malformed("grpc: stream window overflow"));
                    }
                }
                self.release();
            }
            T_RST_STREAM => {
                if p.len() != 4 || h.stream == 0 {
                    return Err(WireError::Malformed("grpc: bad RST_STREAM"));
                }
                if h.stream == self.stream {
                    return Err(WireError::Malformed("grpc: the client reset the stream"));
                }
                self.idle_frame();
            }
            T_GOAWAY => {
                let code = p
                    .get(4..8)
                    .and_then(|c| <[u8; 4]>::try_from(c).ok())
                    .map(u32::from_be_bytes)
                    .ok_or(WireError::Malformed("grpc: GOAWAY truncated"))?;
                // NO_ERROR: a graceful shutdown, the open stream completes.
                if code != 0 {
                    return Err(WireError::Malformed("grpc: the client sent GOAWAY with an error"));
                }
            }
            T_PUSH_PROMISE => return Err(WireError::Malformed("grpc: PUSH_PROMISE from a client")),
            // PRIORITY and unknown types are ignored (RFC 9113 §4.1, §5.5).
            _ => self.idle_frame(),
        }
        Ok(())
    }

    /// A complete header block: decoded (keeping the HPACK table in step), then served,
    /// refused, or taken as the served stream's trailers.
    fn end_block(&mut self) -> Result<(), WireError> {
        self.in_block = false;
        let block = std::mem::take(&mut self.block);
        let id = self.block_stream;
        // Only the request's fields are kept; others are decoded to keep the table in step.
        let keep = self.stream == 0 && id % 2 == 1;
        let mut headers = Vec::new();
        let r = decode_bounded(&mut self.hpack, &block, MAX_HEADER_LIST, |n, v| {
            if keep {
                headers.push((n.to_vec(), v.to_vec()));
            }
        });
        self.block = block;
        self.block.clear();
        if self.block.capacity() > 4096 {
            self.block = Vec::new();
        }
        r?;
        if self.stream == 0 && id % 2 == 1 {
            self.stream = id;
            self.send_stream = i64::from(self.peer_initial);
            self.remote_closed = self.block_end_stream;
            self.request = Some(headers);
        } else if id == self.stream {
            // Trailers from the client.
            if self.block_end_stream {
                self.remote_closed = true;
            }
        } else {
            self.idle_frame();
            if !self.flooded {
                self.queue(T_RST_STREAM, 0, id, &REFUSED_STREAM.to_be_bytes());
            }
        }
        Ok(())
    }

    /// Gives consumed receive window back once half of it is used.
    fn give_back(&mut self) {
        let half = RECV_WINDOW / 2;
        if self.unacked_conn >= half {
            let inc = self.unacked_conn.to_be_bytes();
            self.queue(T_WINDOW_UPDATE, 0, 0, &inc);
            self.recv_conn += i64::from(self.unacked_conn);
            self.unacked_conn = 0;
        }
        if self.unacked_stream >= half && !self.remote_closed && self.stream != 0 {
            let inc = self.unacked_stream.to_be_bytes();
            self.queue(T_WINDOW_UPDATE, 0, self.stream, &inc);
            self.recv_stream += i64::from(self.unacked_stream);
            self.unacked_stream = 0;
        }
    }

    /// Queues DATA payload for the served stream and writes the frames the client's windows
    /// allow to `out`; the rest is held.
    pub fn send(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.held() + payload.len() > MAX_HELD {
            return Err(WireError::Malformed(
                "grpc: the client's flow-control window stays closed",
            ));
        }
        self.held.extend_from_slice(payload);
        self.flush(out);
        Ok(())
    }

    /// Moves held DATA the windows now allow into the control output.
    fn release(&mut self) {
        if self.held() > 0 {
            let mut c = std::mem::take(&mut self.control);
            self.flush(&mut c);
            self.control = c;
        }
    }

    fn flush(&mut self, out: &mut Vec<u8>) {
        // Bounded: each pass sends at least one byte or stops.
        while self.held() > 0 && self.stream != 0 {
            let room = self
                .send_conn
                .min(self.send_stream)
                .min(i64::from(self.peer_max_frame));
            if room <= 0 {
                break;
            }
            let n = (self.held() as u64).min(room as u64) as usize;
            let chunk = self
                .held
                .get(self.held_off..self.held_off + n)
                .unwrap_or_default();
            frame(out, T_DATA, 0, self.stream, chunk);
            self.held_off += n;
            self.send_conn -= n as i64;
            self.send_stream -= n as i64;
            self.credit_conn += n as u64;
            self.credit_stream += n as u64;
            self.data_since_ping = true;
        }
        if self.held_off == self.held.len() {
            self.held.clear();
            self.held_off = 0;
            if self.held.capacity() > 1 << 20 {
                self.held = Vec::new();
            }
        }
    }
}

/// Decodes a header block one field representation at a time, adding up the header list size
/// (RFC 9113 §6.5.2: name + value + 32 per field) as it goes: past `max` the block is refused
/// before another field is decoded, whatever the rest of the block would expand to. `field`
/// sees each field (name, value).
pub fn decode_bounded(
    hpack: &mut Decoder<'static>,
    block: &[u8],
    max: usize,
    mut field: impl FnMut(&[u8], &[u8]),
) -> Result<(), WireError> {
    const BAD: &str = "grpc: bad HPACK header block";
    let bad = || WireError::Malformed(BAD);
    let mut size = 0usize;
    let mut start = 0usize;
    let mut at = 0usize;
    // Bounded: every pass consumes at least one byte of the block or returns.
    while at < block.len() {
        let rest = block.get(at..).unwrap_or_default();
        let first = rest.first().copied().unwrap_or(0);
        let (len, is_field) = if first & 0x80 != 0 {
            (int_len(rest, 7).ok_or_else(bad)?, true)
        } else if first & 0xE0 == 0x20 {
            (int_len(rest, 5).ok_or_else(bad)?, false)
        } else {
            // Literal: name index (6 bits with incremental indexing, else 4), then the name
            // string when the index is 0, then the value string.
            let prefix = if first & 0xC0 == 0x40 { 6 } else { 4 };
            let mut n = int_len(rest, prefix).ok_or_else(bad)?;
            if first & ((1u8 << prefix) - 1) == 0 {
                n += str_len(rest.get(n..).unwrap_or_default()).ok_or_else(bad)?;
            }
            n += str_len(rest.get(n..).unwrap_or_default()).ok_or_else(bad)?;
            (n, true)
        };
        at += len;
        if !is_field {
            // A table size update goes with the field after it (the decoder refuses one at
            // the end of a block).
            continue;
        }
        let rep = block.get(start..at).ok_or_else(bad)?;
        start = at;
        let mut over = false;
        hpack
            .decode_with_cb(rep, |n, v| {
                size = size.saturating_add(n.len() + v.len() + 32);
                if size > max {
                    over = true;
                } else {
                    field(&n, &v);
                }
            })
            .map_err(|_| bad())?;
        if over {
            return Err(WireError::Malformed(
                "grpc: header list larger than SETTINGS_MAX_HEADER_LIST_SIZE",
            ));
        }
    }
    if start < block.len() {
        // Only size updates at the end.
        return Err(bad());
    }
    Ok(())
}

/// Length of the HPACK integer with an `n`-bit prefix at the start of `b` (RFC 7541 §5.1).
fn int_len(b: &[u8], n: u8) -> Option<usize> {
    let mask = (1u8 << n) - 1;
    if b.first()? & mask != mask {
        return Some(1);
    }
    // Up to 4 continuation bytes (28 bits): more is no length a block could use.
    for (i, c) in b.iter().enumerate().skip(1).take(4) {
        if c & 0x80 == 0 {
            return Some(i + 1);
        }
    }
    None
}

/// Length of the HPACK string literal at the start of `b` (RFC 7541 §5.2): its length
/// integer, then that many bytes, all within `b`.
fn str_len(b: &[u8]) -> Option<usize> {
    let n = int_len(b, 7)?;
    let mut v = usize::from(b.first()? & 0x7F);
    if v == 0x7F {
        for (i, c) in b.get(1..n)?.iter().enumerate() {
            v += usize::from(c & 0x7F) << (7 * i);
        }
    }
    let total = n.checked_add(v)?;
    (total <= b.len()).then_some(total)
}
