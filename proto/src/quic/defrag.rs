//! Reassembly of UDP packets that QUIC protocols split over several datagrams (Hysteria 2,
//! TUIC): each fragment carries (session, packet id, fragment id, fragment count); a packet
//! is whole once every fragment is in, and one lost fragment loses it.
//!
//! [`Defragmenter`] keeps one partial packet per session (a newer packet id replaces it, as
//! the reference servers do), at most [`MAX_PARTIAL`] of them and [`MAX_PARTIAL_BYTES`] of
//! payload per connection (the oldest partial goes first), and no packet larger than a UDP
//! datagram can be ([`MAX_PACKET`]). Without the byte bound 64 sessions of 255 full-size
//! fragments held ~22 MiB per connection (issue 11).

/// One fragment as a protocol decoded it.
#[derive(Clone, Copy, Debug)]
pub struct Fragment<'a> {
    pub session: u32,
    pub packet: u16,
    pub frag_id: u8,
    /// 0 or 1: the packet is whole.
    pub frag_count: u8,
    /// The destination or source, in the protocol's own encoding (may be empty on fragments
    /// after the first).
    pub addr: &'a [u8],
    pub payload: &'a [u8],
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
    /// Feeds one fragment: `Some((addr, payload))` when a packet is complete (`addr` as the
    /// first fragment that carried one had it).
    pub fn feed(&mut self, m: Fragment<'_>) -> Option<(Vec<u8>, Vec<u8>)> {
        let (addr, payload) = (m.addr, m.payload);
        if m.frag_count <= 1 {
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
        // TUIC names the address in the first fragment only (the others carry "none").
        if p.addr.is_empty() {
            p.addr = addr.to_vec();
        }
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
