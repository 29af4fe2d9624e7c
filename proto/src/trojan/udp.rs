//! Trojan UDP ASSOCIATE (CMD 0x03): after the request header, the stream carries packets in
//! both directions (the header's own address is ignored, as trojan-gfw does):
//!
//! ```text
//! +------+----------+----------+--------+---------+----------+
//! | ATYP | DST.ADDR | DST.PORT | Length |  CRLF   | Payload  |
//! +------+----------+----------+--------+---------+----------+
//! |  1   | variable |  2 (BE)  | 2 (BE) |  0D 0A  | Length   |
//! +------+----------+----------+--------+---------+----------+
//! ```
//!
//! Client → server the address is the destination; server → client it is the source of the
//! reply. One flow (0): the core uses one outbound socket for the whole association.

use std::net::{IpAddr, SocketAddr};

use super::address;
use crate::{DatagramStreamCodec, StreamDatagram, WireError};

#[derive(Default)]
pub struct TrojanUdp;

impl DatagramStreamCodec for TrojanUdp {
    fn open(
        &mut self,
        plain: &[u8],
        out: &mut Vec<StreamDatagram>,
        _reply: &mut Vec<u8>,
    ) -> Result<usize, WireError> {
        let mut at = 0usize;
        // Bounded by the input: each pass consumes at least one byte or stops.
        while at < plain.len() {
            let rest = plain.get(at..).unwrap_or_default();
            let Some((dest, alen)) = address(rest)? else {
                break;
            };
            let (Some(l), Some(crlf)) = (rest.get(alen..alen + 2), rest.get(alen + 2..alen + 4)) else {
                break;
            };
            if crlf != b"\r\n" {
                return Err(WireError::Malformed("trojan udp: no CRLF after the length"));
            }
            let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
            let start = alen + 4;
            let Some(payload) = rest.get(start..start + len) else {
                break;
            };
            out.push(StreamDatagram::Packet {
                flow: 0,
                dest,
                payload: payload.to_vec(),
            });
            at += start + len;
        }
        Ok(at)
    }

    fn seal(
        &mut self,
        _flow: u16,
        from: SocketAddr,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), WireError> {
        let len = u16::try_from(payload.len())
            .map_err(|_| WireError::Unsupported("trojan udp: datagram over 65535 bytes"))?;
        match from.ip() {
            IpAddr::V4(v4) => {
                out.push(1);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.push(4);
                out.extend_from_slice(&v6.octets());
            }
        }
        out.extend_from_slice(&from.port().to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(payload);
        Ok(())
    }
}
