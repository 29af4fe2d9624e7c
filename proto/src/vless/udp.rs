//! VLESS datagrams: command 0x02 (UDP, one fixed destination) and command 0x03 (Mux.Cool with
//! XUDP, as Xray and sing-box clients send UDP with `packet_encoding: "xudp"`).
//!
//! ```text
//! UDP (0x02), both directions after the header / the response header:
//!   +------------+---------+
//!   | length (2) | payload |
//!   +------------+---------+
//!
//! Mux.Cool frame (0x03), both directions:
//!   +-------------+--------------------------------------------------+--------------------+
//!   | meta len(2) | metadata (≤ 512)                                 | [len(2) | data]    |
//!   +-------------+--------------------------------------------------+--------------------+
//!   metadata: session id (2) | status (1) | option (1) | [network (1) | port (2) | atyp | addr]
//!             | [global id (8), New UDP from Xray clients]
//!   status: 0x01 New (network + address always), 0x02 Keep (network 0x02 + address = the
//!           packet's destination/source for XUDP, else none), 0x03 End, 0x04 KeepAlive
//!   option: 0x01 data follows, 0x02 error
//!   network: 0x01 TCP, 0x02 UDP; atyp: 0x01 IPv4, 0x02 domain, 0x03 IPv6 (port first)
//! ```
//!
//! Each UDP sub-session is one flow (its session id): its own outbound socket, replies as Keep
//! frames carrying the source address (what Xray's server writes). Each TCP sub-stream (what
//! v2ray/Xray clients with `mux` enabled send for every TCP connection) is a flow too: New
//! opens it ([`StreamDatagram::StreamOpen`]), Keep frames carry its bytes
//! ([`StreamDatagram::StreamData`]), End closes it; the server's bytes go back as Keep frames
//! without address ([`DatagramStreamCodec::seal_stream`], at most [`MAX_STREAM_CHUNK`] a frame)
//! and its end as an End frame ([`DatagramStreamCodec::seal_end`]). At most
//! [`MAX_STREAMS`] TCP sub-streams are open at once; more are refused with End + error.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use super::{address, port_at};
use crate::{DatagramStreamCodec, Destination, StreamDatagram, WireError};

/// Command 0x02: length-prefixed payloads to/from the header's destination.
pub struct VlessUdp {
    pub dest: Destination,
}

impl DatagramStreamCodec for VlessUdp {
    fn open(
        &mut self,
        plain: &[u8],
        out: &mut Vec<StreamDatagram>,
        _reply: &mut Vec<u8>,
    ) -> Result<usize, WireError> {
        let mut at = 0usize;
        while let Some(len) = port_at(plain, at) {
            let len = usize::from(len);
            let Some(payload) = plain.get(at + 2..at + 2 + len) else {
                break;
            };
            out.push(StreamDatagram::Packet {
                flow: 0,
                dest: self.dest.clone(),
                payload: payload.to_vec(),
            });
            at += 2 + len;
        }
        Ok(at)
    }

    fn seal(
        &mut self,
        _flow: u16,
        _from: SocketAddr,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let len = u16::try_from(payload.len())
            .map_err(|_| WireError::Unsupported("vless udp: datagram over 65535 bytes"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        Ok(())
    }
}

pub const MAX_META: usize = 512;
const STATUS_NEW: u8 = 1;
const STATUS_KEEP: u8 = 2;
const STATUS_END: u8 = 3;
const STATUS_KEEPALIVE: u8 = 4;
const OPTION_DATA: u8 = 1;
const OPTION_ERROR: u8 = 2;
const NET_TCP: u8 = 1;
const NET_UDP: u8 = 2;
/// Sub-sessions one connection may hold open.
pub const MAX_SESSIONS: usize = 256;
/// TCP sub-streams one connection may hold open.
pub const MAX_STREAMS: usize = 128;
/// Most bytes of a TCP sub-stream one Keep frame carries (v2ray writes 8 KiB frames).
pub const MAX_STREAM_CHUNK: usize = 16 * 1024;

/// Command 0x03: Mux.Cool frames with XUDP sub-sessions and TCP sub-streams.
#[derive(Default)]
pub struct Xudp {
    /// Open UDP sub-sessions and their New-frame destination (for Keep frames without one).
    sessions: HashMap<u16, Destination>,
    /// Open TCP sub-streams.
    streams: HashSet<u16>,
}

/// Port then address (mux order), at the start of `b`.
fn port_address(b: &[u8]) -> Result<Option<(Destination, usize)>, WireError> {
    let Some(port) = port_at(b, 0) else {
        return Ok(None);
    };
    Ok(address(b.get(2..).unwrap_or_default(), port)?.map(|(d, n)| (d, n + 2)))
}

/// An End frame (metadata only) for `sid`, with the error option.
fn end_frame(sid: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&sid.to_be_bytes());
    out.extend_from_slice(&[STATUS_END, OPTION_ERROR]);
}

impl DatagramStreamCodec for Xudp {
    fn open(
        &mut self,
        plain: &[u8],
        out: &mut Vec<StreamDatagram>,
        reply: &mut Vec<u8>,
    ) -> Result<usize, WireError> {
        const SHORT: WireError = WireError::Malformed("mux: metadata too short");
        let mut at = 0usize;
        while let Some(mlen) = port_at(plain, at) {
            let mlen = usize::from(mlen);
            if mlen > MAX_META {
                return Err(WireError::Malformed("mux: metadata longer than 512 bytes"));
            }
            let Some(meta) = plain.get(at + 2..at + 2 + mlen) else {
                break;
            };
            let (Some(sid), Some(&status), Some(&option)) = (port_at(meta, 0), meta.get(2), meta.get(3))
            else {
                return Err(SHORT);
            };
            let mut end = at + 2 + mlen;
            let data = if option & OPTION_DATA != 0 {
                let Some(dlen) = port_at(plain, end) else {
                    break;
                };
                let dlen = usize::from(dlen);
                let Some(d) = plain.get(end + 2..end + 2 + dlen) else {
                    break;
                };
                end += 2 + dlen;
                Some(d)
            } else {
                None
            };
            // The frame is complete: act on it.
            let rest = meta.get(4..).unwrap_or_default();
            match status {
                STATUS_NEW => {
                    let (Some(&net), Some((dest, _))) =
                        (rest.first(), port_address(rest.get(1..).unwrap_or_default())?)
                    else {
                        return Err(SHORT);
                    };
                    if self.streams.contains(&sid) {
                        return Err(WireError::Malformed("mux: New for an open TCP sub-stream"));
                    }
                    match net {
                        NET_UDP if self.sessions.len() < MAX_SESSIONS || self.sessions.contains_key(&sid) => {
                            self.sessions.insert(sid, dest.clone());
                            if let Some(d) = data {
                                out.push(StreamDatagram::Packet {
                                    flow: sid,
                                    dest,
                                    payload: d.to_vec(),
                                });
                            }
                        }
                        NET_TCP if self.streams.len() < MAX_STREAMS && !self.sessions.contains_key(&sid) => {
                            self.streams.insert(sid);
                            out.push(StreamDatagram::StreamOpen {
                                flow: sid,
                                dest,
                                data: data.unwrap_or_default().to_vec(),
                            });
                        }
                        // Too many sessions or sub-streams.
                        NET_TCP | NET_UDP => end_frame(sid, reply),
                        _ => return Err(WireError::Malformed("mux: unknown network")),
                    }
                }
                STATUS_KEEP => {
                    let dest = match rest.first() {
                        Some(&NET_UDP) => port_address(rest.get(1..).unwrap_or_default())?.map(|(d, _)| d),
                        _ => None,
                    };
                    if self.streams.contains(&sid) {
                        if let Some(d) = data.filter(|d| !d.is_empty()) {
                            out.push(StreamDatagram::StreamData {
                                flow: sid,
                                data: d.to_vec(),
                            });
                        }
                        at = end;
                        continue;
                    }
                    match (self.sessions.get(&sid), data) {
                        (Some(default), Some(d)) => out.push(StreamDatagram::Packet {
                            flow: sid,
                            dest: dest.unwrap_or_else(|| default.clone()),
                            payload: d.to_vec(),
                        }),
                        (Some(_), None) => {}
                        // Data for a session we do not have (refused or ended): tell the client.
                        (None, _) => end_frame(sid, reply),
                    }
                }
                STATUS_END => {
                    if self.sessions.remove(&sid).is_some() || self.streams.remove(&sid) {
                        out.push(StreamDatagram::End { flow: sid });
                    }
                }
                STATUS_KEEPALIVE => {}
                _ => return Err(WireError::Malformed("mux: unknown session status")),
            }
            at = end;
        }
        Ok(at)
    }

    fn seal(
        &mut self,
        flow: u16,
        from: SocketAddr,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let len = u16::try_from(payload.len())
            .map_err(|_| WireError::Unsupported("mux: datagram over 65535 bytes"))?;
        let (atyp, ip): (u8, Vec<u8>) = match from.ip() {
            IpAddr::V4(v4) => (1, v4.octets().to_vec()),
            IpAddr::V6(v6) => (3, v6.octets().to_vec()),
        };
        let mlen = 4 + 1 + 2 + 1 + ip.len();
        out.extend_from_slice(&(mlen as u16).to_be_bytes());
        out.extend_from_slice(&flow.to_be_bytes());
        out.extend_from_slice(&[STATUS_KEEP, OPTION_DATA, NET_UDP]);
        out.extend_from_slice(&from.port().to_be_bytes());
        out.push(atyp);
        out.extend_from_slice(&ip);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
        Ok(())
    }

    fn seal_stream(&mut self, flow: u16, data: &[u8], out: &mut Vec<u8>) -> Result<(), WireError> {
        for piece in data.chunks(MAX_STREAM_CHUNK) {
            // Keep, option data, no address (v2ray's response writer), then length and bytes.
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&flow.to_be_bytes());
            out.extend_from_slice(&[STATUS_KEEP, OPTION_DATA]);
            out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            out.extend_from_slice(piece);
        }
        Ok(())
    }

    fn seal_end(&mut self, flow: u16, error: bool, out: &mut Vec<u8>) -> Result<(), WireError> {
        self.streams.remove(&flow);
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&flow.to_be_bytes());
        out.extend_from_slice(&[STATUS_END, if error { OPTION_ERROR } else { 0 }]);
        Ok(())
    }
}
