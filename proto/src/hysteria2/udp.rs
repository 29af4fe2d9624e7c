//! Hysteria 2 UDP messages (QUIC datagrams, both ways) and fragment reassembly.
//!
//! ```text
//! +------------+-----------+---------+------------+-------------+-------------+---------
//! | session id | packet id | frag id | frag count | addr varint | "host:port" | payload
//! |   u32 BE   |  u16 BE   |   u8    |     u8     |             |             |
//! +------------+-----------+---------+------------+-------------+-------------+---------
//! ```
//!
//! A packet too large for one datagram is sent as `frag count` fragments with one packet id,
//! fragment ids 0.., each with the full header; a packet with count 1 is whole (its packet and
//! fragment ids mean nothing). A packet is processed once every fragment is in; one lost
//! fragment loses the packet. [`Defragmenter`] keeps one partial packet per session (a newer
//! packet id replaces it, as the reference does), at most [`MAX_PARTIAL`] of them and
//! [`MAX_PARTIAL_BYTES`] of payload per connection (the oldest partial goes first), and no
//! packet larger than a UDP datagram can be ([`MAX_PACKET`]). Without the byte bound 64
//! sessions of 255 full-size fragments held ~22 MiB per connection (issue 11).

use crate::WireError;

use super::{put_varint, varint, MAX_ADDRESS};

/// Session, packet and fragment fields.
pub const FIXED_HEADER: usize = 4 + 2 + 1 + 1;

/// One decoded message; `payload` and `addr` are ranges of the datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub session: u32,
    pub packet: u16,
    pub frag_id: u8,
    pub frag_count: u8,
    pub addr: std::ops::Range<usize>,
    pub payload: std::ops::Range<usize>,
}

/// Decodes one datagram.
pub fn decode(d: &[u8]) -> Result<Message, WireError> {
    const SHORT: WireError = WireError::Malformed("hysteria2 udp: datagram shorter than its header");
    let fixed = d.get(..FIXED_HEADER).ok_or(SHORT)?;
    let session = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
    let packet = u16::from_be_bytes([fixed[4], fixed[5]]);
    let (frag_id, frag_count) = (fixed[6], fixed[7]);
    if frag_count == 0 || frag_id >= frag_count {
        return Err(WireError::Malformed(
            "hysteria2 udp: fragment id outside its count",
        ));
    }
    let (len, n) = d.get(FIXED_HEADER..).and_then(varint).ok_or(SHORT)?;
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l > 0 && l <= MAX_ADDRESS)
        .ok_or(WireError::Malformed(
            "hysteria2 udp: address length 0 or over 2048",
        ))?;
    let start = FIXED_HEADER + n;
    let end = start + len;
    if d.len() < end {
        return Err(SHORT);
    }
    Ok(Message {
        session,
        packet,
        frag_id,
        frag_count,
        addr: start..end,
        payload: end..d.len(),
    })
}

/// Encodes `payload` from `addr` for `session` into datagrams of at most `max` bytes each
/// (fragmenting when needed, up to 255 fragments), appended to `out`. Returns false (nothing
/// appended) when even one fragment cannot fit or 255 are not enough.
pub fn encode(
    out: &mut Vec<Vec<u8>>,
    session: u32,
    packet: u16,
    addr: &str,
    payload: &[u8],
    max: usize,
) -> bool {
    let mut head = Vec::with_capacity(FIXED_HEADER + 2 + addr.len());
    head.extend_from_slice(&session.to_be_bytes());
    head.extend_from_slice(&packet.to_be_bytes());
    head.extend_from_slice(&[0, 1]);
    put_varint(&mut head, addr.len() as u64);
    head.extend_from_slice(addr.as_bytes());
    let Some(room) = max.checked_sub(head.len()).filter(|&r| r > 0) else {
        return false;
    };
    if payload.len() <= room {
        let mut d = head;
        d.extend_from_slice(payload);
        out.push(d);
        return true;
    }
    let count = payload.len().div_ceil(room);
    let Ok(count) = u8::try_from(count) else {
        return false;
    };
    for (i, chunk) in payload.chunks(room).enumerate() {
        let mut d = head.clone();
        d[6] = i as u8;
        d[7] = count;
        d.extend_from_slice(chunk);
        out.push(d);
    }
    true
}

/// Most sessions with a packet in reassembly at once, per connection.
pub use crate::quic::defrag::{MAX_PACKET, MAX_PARTIAL, MAX_PARTIAL_BYTES};

/// Reassembles Hysteria 2's fragmented packets ([`crate::quic::defrag`]: one partial packet
/// per session, bounded in count and bytes).
#[derive(Default)]
pub struct Defragmenter(crate::quic::defrag::Defragmenter);

impl Defragmenter {
    /// Feeds one decoded datagram `d`: `Some((addr, payload))` when a packet is complete.
    pub fn feed(&mut self, m: &Message, d: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        self.0.feed(crate::quic::defrag::Fragment {
            session: m.session,
            packet: m.packet,
            frag_id: m.frag_id,
            frag_count: m.frag_count,
            addr: d.get(m.addr.clone())?,
            payload: d.get(m.payload.clone())?,
        })
    }

    /// Sessions with a partial packet.
    pub fn pending(&self) -> usize {
        self.0.pending()
    }

    /// Payload bytes held in partial packets.
    pub fn buffered(&self) -> usize {
        self.0.buffered()
    }
}
