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
pub const MAX_PARTIAL: usize = 16;
/// Most payload bytes held in partial packets, per connection: four packets of the largest
/// size. A client sends fragments of one packet back to back, so a legitimate one is seldom
/// waiting for more than a few packets at once.
pub const MAX_PARTIAL_BYTES: usize = 4 * MAX_PACKET;
/// The largest packet reassembled: a UDP datagram's payload cannot be larger, so a packet
/// beyond it could never be sent on (it is dropped once its fragments add up past it).
pub const MAX_PACKET: usize = 65535;

struct Partial {
    packet: u16,
    count: u8,
    got: u8,
    /// Payload bytes held.
    bytes: usize,
    /// Address of the first fragment seen (all carry the same).
    addr: Vec<u8>,
    frags: Vec<Option<Vec<u8>>>,
}

/// Reassembles fragmented packets: at most one partial packet per session, [`MAX_PARTIAL`]
/// sessions and [`MAX_PARTIAL_BYTES`] (the oldest partial is dropped for a new one).
#[derive(Default)]
pub struct Defragmenter {
    /// Oldest first.
    partial: Vec<(u32, Partial)>,
    /// Payload bytes held by `partial`.
    bytes: usize,
}

impl Defragmenter {
    /// Feeds one decoded datagram `d`: `Some((addr, payload))` when a packet is complete.
    pub fn feed(&mut self, m: &Message, d: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let addr = d.get(m.addr.clone())?;
        let payload = d.get(m.payload.clone())?;
        if m.frag_count == 1 {
            return Some((addr.to_vec(), payload.to_vec()));
        }
        // A partial packet of this session that this fragment does not belong to is replaced
        // (a newer packet id, as the reference does).
        let pos = self.partial.iter().position(|(s, _)| *s == m.session);
        if let Some(i) = pos {
            if self
                .partial
                .get(i)
                .is_some_and(|(_, p)| p.packet != m.packet || p.count != m.frag_count)
            {
                self.drop_at(i);
            }
        }
        let mut idx = self.partial.iter().position(|(s, _)| *s == m.session);
        // A packet that grows past what a datagram can carry is dropped with what it held.
        let held = idx.and_then(|i| self.partial.get(i)).map_or(0, |(_, p)| p.bytes);
        if held + payload.len() > MAX_PACKET {
            if let Some(i) = idx {
                self.drop_at(i);
            }
            return None;
        }
        // Room: the oldest partials (other than this one) go first.
        loop {
            let over_count = idx.is_none() && self.partial.len() >= MAX_PARTIAL;
            let over_bytes = self.bytes + payload.len() > MAX_PARTIAL_BYTES;
            if !over_count && !over_bytes {
                break;
            }
            let victim = usize::from(idx == Some(0));
            if victim >= self.partial.len() {
                return None;
            }
            self.drop_at(victim);
            idx = idx.map(|i| if victim < i { i - 1 } else { i });
        }
        let idx = match idx {
            Some(i) => i,
            None => {
                self.partial.push((
                    m.session,
                    Partial {
                        packet: m.packet,
                        count: m.frag_count,
                        got: 0,
                        bytes: 0,
                        addr: addr.to_vec(),
                        frags: vec![None; usize::from(m.frag_count)],
                    },
                ));
                self.partial.len() - 1
            }
        };
        let p = &mut self.partial.get_mut(idx)?.1;
        let slot = p.frags.get_mut(usize::from(m.frag_id))?;
        if slot.is_none() {
            *slot = Some(payload.to_vec());
            p.got += 1;
            p.bytes += payload.len();
            self.bytes += payload.len();
        }
        if p.got < p.count {
            return None;
        }
        let (_, p) = self.partial.remove(idx);
        self.bytes = self.bytes.saturating_sub(p.bytes);
        let whole: Vec<u8> = p.frags.into_iter().flatten().flatten().collect();
        Some((p.addr, whole))
    }

    fn drop_at(&mut self, i: usize) {
        if i < self.partial.len() {
            let (_, p) = self.partial.remove(i);
            self.bytes = self.bytes.saturating_sub(p.bytes);
        }
    }

    /// Sessions with a partial packet.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Payload bytes held in partial packets.
    pub fn buffered(&self) -> usize {
        self.bytes
    }
}
