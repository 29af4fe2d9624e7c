//! The AnyTLS session after authentication (frame layout at the top of [`super`]): a
//! [`DatagramStreamCodec`] that turns client streams into mux sub-streams (TCP) or datagram
//! flows (sing-box UDP-over-TCP v2), and frames what goes back.
//!
//! AnyTLS stream ids are 32-bit; the core's flows are 16-bit: each open stream gets a free flow
//! number, mapped both ways. Bounds: at most [`MAX_STREAMS`] streams per session (more are
//! refused: synack with an error for v2 clients, then fin); bytes held for incomplete
//! destinations and UDP packets are capped per session ([`MAX_BUFFERED`]); a frame is at most
//! 7 + 65535 bytes, and only complete frames are consumed.
//!
//! Behaviour follows the reference server (sing-anytls): a syn before the client's settings
//! gets an alert and ends the session; settings with a different `padding-md5` are answered
//! with the node's scheme, settings with `v >= 2` with serverSettings `v=2`; then (v2) each
//! stream's synack follows its outbound connect, with the error text when that failed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{address, put_address, PaddingScheme, SOCKS, UOT};
use crate::{DatagramStreamCodec, Destination, StreamDatagram, WireError};

pub const CMD_WASTE: u8 = 0;
pub const CMD_SYN: u8 = 1;
pub const CMD_PSH: u8 = 2;
pub const CMD_FIN: u8 = 3;
pub const CMD_SETTINGS: u8 = 4;
pub const CMD_ALERT: u8 = 5;
pub const CMD_UPDATE_PADDING: u8 = 6;
pub const CMD_SYNACK: u8 = 7;
pub const CMD_HEART_REQUEST: u8 = 8;
pub const CMD_HEART_RESPONSE: u8 = 9;
pub const CMD_SERVER_SETTINGS: u8 = 10;

/// Frame header: cmd, stream id, data length.
pub const HEADER: usize = 7;
/// Streams one session may hold open (the mux sub-stream limit, `node/mux_tcp.rs`).
pub const MAX_STREAMS: usize = 128;
/// Bytes held for incomplete destinations and UDP packets, all streams together.
pub const MAX_BUFFERED: usize = 1 << 20;
/// The sing-box UDP-over-TCP v2 destination.
pub const UOT_MAGIC: &str = "sp.v2.udp-over-tcp.arpa";
/// UDP-over-TCP v1 (not served: sing-box's AnyTLS uses v2).
pub const UOT_LEGACY: &str = "sp.udp-over-tcp.arpa";
/// Longest SOCKS address: type, length, 255-byte name, port.
const MAX_ADDR: usize = 1 + 1 + 255 + 2;
/// Longest UDP-over-TCP packet: address, length, payload.
const MAX_UOT_PACKET: usize = MAX_ADDR + 2 + 65535;

/// What a stream is at.
enum Kind {
    /// Waiting for the destination address (bytes so far).
    Addr(Vec<u8>),
    /// A TCP sub-stream (opened).
    Tcp,
    /// UDP-over-TCP, waiting for the request header (bytes so far).
    UotHead(Vec<u8>),
    /// UDP-over-TCP packets: `connect` = the request's destination for connect mode;
    /// `pending` = an incomplete packet.
    Uot {
        connect: Option<Destination>,
        pending: Vec<u8>,
    },
}

impl Kind {
    fn buffered(&self) -> usize {
        match self {
            Kind::Addr(b) | Kind::UotHead(b) | Kind::Uot { pending: b, .. } => b.len(),
            Kind::Tcp => 0,
        }
    }
    /// Whether the core knows the flow (so the client's fin must end it there).
    fn opened(&self) -> bool {
        !matches!(self, Kind::Addr(_))
    }
}

struct Stream {
    flow: u16,
    kind: Kind,
    /// synack sent (v2).
    acked: bool,
}

/// One AnyTLS session's state.
pub struct Session {
    scheme: Arc<PaddingScheme>,
    /// The client sent its settings (a syn before them ends the session).
    settings: bool,
    /// The client's protocol version (settings `v`), 1 until it says more.
    version: u8,
    streams: HashMap<u32, Stream>,
    flows: HashMap<u16, u32>,
    next_flow: u16,
    buffered: usize,
}

/// Appends one frame (`data` at most 65535 bytes; longer data is cut).
fn frame(out: &mut Vec<u8>, cmd: u8, sid: u32, data: &[u8]) {
    let len = data.len().min(usize::from(u16::MAX));
    out.push(cmd);
    out.extend_from_slice(&sid.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(data.get(..len).unwrap_or_default());
}

/// Appends `data` as psh frames of at most 65535 bytes each.
fn push_frames(out: &mut Vec<u8>, sid: u32, data: &[u8]) {
    out.reserve(data.len() + HEADER * (data.len() / usize::from(u16::MAX) + 1));
    for chunk in data.chunks(usize::from(u16::MAX)) {
        frame(out, CMD_PSH, sid, chunk);
    }
}

/// `key=value` lines (the settings format; lines without `=` are skipped).
fn settings_map(data: &[u8]) -> HashMap<&str, &str> {
    std::str::from_utf8(data)
        .unwrap_or_default()
        .split('\n')
        .filter_map(|l| l.split_once('='))
        .collect()
}

impl Session {
    pub fn new(scheme: Arc<PaddingScheme>) -> Self {
        Session {
            scheme,
            settings: false,
            version: 1,
            streams: HashMap::new(),
            flows: HashMap::new(),
            next_flow: 0,
            buffered: 0,
        }
    }

    /// Open streams (for tests).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// A flow number no open stream uses (at most [`MAX_STREAMS`] are in use).
    fn alloc_flow(&mut self) -> u16 {
        loop {
            let f = self.next_flow;
            self.next_flow = f.wrapping_add(1);
            if !self.flows.contains_key(&f) {
                return f;
            }
        }
    }

    /// Refuses stream `sid`: synack with the error for v2 clients, then fin.
    fn refuse(&self, sid: u32, why: &str, reply: &mut Vec<u8>) {
        if self.version >= 2 {
            frame(reply, CMD_SYNACK, sid, why.as_bytes());
        }
        frame(reply, CMD_FIN, sid, &[]);
    }

    /// Forgets stream `sid`; `Some(flow)` when the core knows its flow.
    fn forget(&mut self, sid: u32) -> Option<u16> {
        let st = self.streams.remove(&sid)?;
        self.flows.remove(&st.flow);
        self.buffered = self.buffered.saturating_sub(st.kind.buffered());
        st.kind.opened().then_some(st.flow)
    }

    fn syn(&mut self, sid: u32, reply: &mut Vec<u8>) {
        if self.streams.contains_key(&sid) {
            return;
        }
        if self.streams.len() >= MAX_STREAMS {
            self.refuse(sid, "too many streams", reply);
            return;
        }
        let flow = self.alloc_flow();
        self.flows.insert(flow, sid);
        self.streams.insert(
            sid,
            Stream {
                flow,
                kind: Kind::Addr(Vec::new()),
                acked: false,
            },
        );
    }

    fn fin(&mut self, sid: u32, out: &mut Vec<StreamDatagram>) {
        if let Some(flow) = self.forget(sid) {
            out.push(StreamDatagram::End { flow });
        }
    }

    fn settings(&mut self, data: &[u8], reply: &mut Vec<u8>) {
        self.settings = true;
        let m = settings_map(data);
        if m.get("padding-md5").copied() != Some(self.scheme.md5_hex.as_str()) {
            frame(reply, CMD_UPDATE_PADDING, 0, &self.scheme.raw);
        }
        if let Some(v) = m.get("v").and_then(|v| v.trim().parse::<u64>().ok()) {
            if v >= 2 {
                self.version = u8::try_from(v).unwrap_or(u8::MAX);
                frame(reply, CMD_SERVER_SETTINGS, 0, b"v=2");
            }
        }
    }

    /// Stream data: the destination first, then payload (TCP) or UDP-over-TCP.
    fn psh(
        &mut self,
        sid: u32,
        data: &[u8],
        out: &mut Vec<StreamDatagram>,
        reply: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let Some(st) = self.streams.get_mut(&sid) else {
            // A stream that is closed (or was refused): dropped.
            return Ok(());
        };
        let flow = st.flow;
        let before = st.kind.buffered();
        let kind = std::mem::replace(&mut st.kind, Kind::Tcp);
        let (kind, refused) = match kind {
            Kind::Tcp => {
                if !data.is_empty() {
                    out.push(StreamDatagram::StreamData {
                        flow,
                        data: data.to_vec(),
                    });
                }
                (Kind::Tcp, None)
            }
            Kind::Addr(mut buf) => {
                buf.extend_from_slice(data);
                match address(&buf, SOCKS) {
                    Ok(None) if buf.len() < MAX_ADDR => (Kind::Addr(buf), None),
                    Ok(None) | Err(_) => (Kind::Addr(Vec::new()), Some("bad destination address")),
                    Ok(Some((Destination::Domain(d, _), n))) if d == UOT_MAGIC => {
                        let rest = buf.get(n..).unwrap_or_default().to_vec();
                        uot_head(rest, flow, out)
                    }
                    Ok(Some((Destination::Domain(d, _), _))) if d == UOT_LEGACY => {
                        (Kind::Addr(Vec::new()), Some("UDP-over-TCP v1 is not supported"))
                    }
                    Ok(Some((dest, n))) => {
                        let data = buf.get(n..).unwrap_or_default().to_vec();
                        out.push(StreamDatagram::StreamOpen { flow, dest, data });
                        (Kind::Tcp, None)
                    }
                }
            }
            Kind::UotHead(mut buf) => {
                buf.extend_from_slice(data);
                uot_head(buf, flow, out)
            }
            Kind::Uot { connect, mut pending } => {
                pending.extend_from_slice(data);
                match uot_packets(&mut pending, connect.as_ref(), flow, out) {
                    Ok(()) => (Kind::Uot { connect, pending }, None),
                    Err(_) => (
                        Kind::Uot {
                            connect,
                            pending: Vec::new(),
                        },
                        Some("bad UDP packet"),
                    ),
                }
            }
        };
        // The request header of a UDP-over-TCP stream is in: the stream is open (its socket
        // is opened on the first packet), so v2 clients get their synack now.
        let uot_ready = matches!(kind, Kind::Uot { .. }) && !st.acked && refused.is_none();
        let after = kind.buffered();
        st.kind = kind;
        if uot_ready && self.version >= 2 {
            st.acked = true;
            frame(reply, CMD_SYNACK, sid, &[]);
        }
        self.buffered = (self.buffered + after).saturating_sub(before);
        if let Some(why) = refused {
            self.refuse(sid, why, reply);
            if let Some(flow) = self.forget(sid) {
                out.push(StreamDatagram::End { flow });
            }
        }
        if self.buffered > MAX_BUFFERED {
            return Err(WireError::Malformed(
                "anytls: too many bytes held for incomplete packets",
            ));
        }
        Ok(())
    }
}

/// The UDP-over-TCP request header (is_connect, SOCKS destination) from `buf`; packets after
/// it are decoded at once. Returns the stream's new state and a refusal reason.
fn uot_head(mut buf: Vec<u8>, flow: u16, out: &mut Vec<StreamDatagram>) -> (Kind, Option<&'static str>) {
    let Some(&is_connect) = buf.first() else {
        return (Kind::UotHead(buf), None);
    };
    match address(buf.get(1..).unwrap_or_default(), SOCKS) {
        Ok(None) if buf.len() < 1 + MAX_ADDR => (Kind::UotHead(buf), None),
        Ok(None) | Err(_) => (Kind::UotHead(Vec::new()), Some("bad UDP-over-TCP request")),
        Ok(Some((dest, n))) => {
            buf.drain(..(1 + n).min(buf.len()));
            let connect = (is_connect != 0).then_some(dest);
            match uot_packets(&mut buf, connect.as_ref(), flow, out) {
                Ok(()) => (
                    Kind::Uot {
                        connect,
                        pending: buf,
                    },
                    None,
                ),
                Err(_) => (
                    Kind::Uot {
                        connect,
                        pending: Vec::new(),
                    },
                    Some("bad UDP packet"),
                ),
            }
        }
    }
}

/// Decodes the complete UDP-over-TCP packets at the front of `pending` (removing them).
fn uot_packets(
    pending: &mut Vec<u8>,
    connect: Option<&Destination>,
    flow: u16,
    out: &mut Vec<StreamDatagram>,
) -> Result<(), WireError> {
    let mut at = 0;
    loop {
        let rest = pending.get(at..).unwrap_or_default();
        let (dest, alen) = match connect {
            Some(d) => (d.clone(), 0),
            None => match address(rest, UOT)? {
                Some(a) => a,
                None => break,
            },
        };
        let Some(len) = super::port_at(rest, alen) else {
            break;
        };
        let start = alen + 2;
        let Some(payload) = rest.get(start..start + usize::from(len)) else {
            break;
        };
        out.push(StreamDatagram::Packet {
            flow,
            dest,
            payload: payload.to_vec(),
        });
        at += start + usize::from(len);
    }
    pending.drain(..at.min(pending.len()));
    if pending.len() > MAX_UOT_PACKET {
        return Err(WireError::Malformed("anytls: UDP packet too long"));
    }
    Ok(())
}

impl DatagramStreamCodec for Session {
    fn open(
        &mut self,
        plain: &[u8],
        out: &mut Vec<StreamDatagram>,
        reply: &mut Vec<u8>,
    ) -> Result<usize, WireError> {
        let mut at = 0;
        // Bounded by `plain`: each pass consumes one frame.
        while let Some(h) = plain.get(at..at + HEADER) {
            let (cmd, sid, len) = match h {
                [c, a, b, d, e, l0, l1] => (
                    *c,
                    u32::from_be_bytes([*a, *b, *d, *e]),
                    usize::from(u16::from_be_bytes([*l0, *l1])),
                ),
                _ => break,
            };
            let carries = matches!(
                cmd,
                CMD_WASTE
                    | CMD_PSH
                    | CMD_SETTINGS
                    | CMD_ALERT
                    | CMD_UPDATE_PADDING
                    | CMD_SYNACK
                    | CMD_SERVER_SETTINGS
            );
            let dlen = if carries { len } else { 0 };
            let Some(data) = plain.get(at + HEADER..at + HEADER + dlen) else {
                break;
            };
            at += HEADER + dlen;
            match cmd {
                CMD_SYN => {
                    if !self.settings {
                        frame(reply, CMD_ALERT, 0, b"client did not send its settings");
                        return Err(WireError::Malformed("anytls: syn before settings"));
                    }
                    self.syn(sid, reply);
                }
                CMD_PSH => self.psh(sid, data, out, reply)?,
                CMD_FIN => self.fin(sid, out),
                CMD_SETTINGS if dlen > 0 => self.settings(data, reply),
                CMD_HEART_REQUEST => frame(reply, CMD_HEART_RESPONSE, sid, &[]),
                CMD_ALERT if dlen > 0 => return Err(WireError::Unsupported("anytls: alert from the client")),
                // waste, server-bound copies of server commands, unknown commands: ignored.
                _ => {}
            }
        }
        Ok(at)
    }

    /// A UDP-over-TCP reply on `flow` from `from`.
    fn seal(
        &mut self,
        flow: u16,
        from: SocketAddr,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let sid = *self
            .flows
            .get(&flow)
            .ok_or(WireError::Malformed("anytls: reply for a closed stream"))?;
        let Some(Stream {
            kind: Kind::Uot { connect, .. },
            ..
        }) = self.streams.get(&sid)
        else {
            return Err(WireError::Malformed("anytls: datagram reply on a TCP stream"));
        };
        let len =
            u16::try_from(payload.len()).map_err(|_| WireError::Malformed("anytls: datagram too long"))?;
        let mut packet = Vec::with_capacity(payload.len() + 21);
        if connect.is_none() {
            put_address(&mut packet, from, UOT);
        }
        packet.extend_from_slice(&len.to_be_bytes());
        packet.extend_from_slice(payload);
        push_frames(out, sid, &packet);
        Ok(())
    }

    fn seal_connected(&mut self, flow: u16, out: &mut Vec<u8>) -> Result<(), WireError> {
        let version = self.version;
        let Some(sid) = self.flows.get(&flow).copied() else {
            return Ok(());
        };
        if let Some(st) = self.streams.get_mut(&sid) {
            if !st.acked && version >= 2 {
                st.acked = true;
                frame(out, CMD_SYNACK, sid, &[]);
            }
        }
        Ok(())
    }

    fn seal_stream(&mut self, flow: u16, data: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        // A stream the client closed meanwhile: nothing goes out.
        let Some(sid) = self.flows.get(&flow).copied() else {
            return Ok(());
        };
        self.seal_connected(flow, out)?;
        push_frames(out, sid, data);
        Ok(())
    }

    fn seal_end(&mut self, flow: u16, error: bool, out: &mut Vec<u8>) -> Result<(), WireError> {
        let Some(sid) = self.flows.get(&flow).copied() else {
            return Ok(());
        };
        let acked = self.streams.get(&sid).is_some_and(|s| s.acked);
        if error && !acked && self.version >= 2 {
            frame(out, CMD_SYNACK, sid, b"outbound connection failed");
        }
        frame(out, CMD_FIN, sid, &[]);
        self.forget(sid);
        Ok(())
    }
}
