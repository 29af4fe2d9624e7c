//! QUIC connections across an upgrade: the successor hands the predecessor the packets of the
//! predecessor's connections (issue 15: "the old process keeps its connections' packets").
//!
//! Both processes hold the same `SO_REUSEPORT` sockets after the hand-over, so a datagram
//! reaches whichever process reads it first. The predecessor therefore stops reading them
//! ("parked": it still sends through them, so its replies leave from the node's port) and the
//! successor reads everything. A connection id names the core slot that issued it (`steer`:
//! the slots of the two processes differ, `V2SP_CORE_BASE`), so the successor recognises a
//! short-header packet of a predecessor's connection (a valid tag, a slot it does not serve)
//! and sends it over a unix datagram socket pair made for this upgrade, instead of answering
//! it with a stateless reset. The predecessor puts it into the inbox of the core that holds the
//! connection, as steering between its own cores does. When the predecessor has drained and
//! exited, sending fails, the link is marked dead, and the successor's resets end whatever
//! connection is left (its client redials at once: the reset key is shared).
//!
//! ```text
//!  one message = one datagram run (a datagram, or a GRO batch of one 4-tuple)
//!  0     1     2        4        6                 24                42                59
//!  +-----+-----+--------+--------+-----------------+-----------------+-----------------+------
//!  | ver | ecn | core   | stride | listening addr  | source addr     | destination ip  | data
//!  |  1  |     | u16 BE | u16 BE | v6/mapped + port| v6/mapped + port| 0/4/6 + 16 B    |
//!  +-----+-----+--------+--------+-----------------+-----------------+-----------------+------
//!  ecn: 0 none, else the codepoint's bits
//! ```
//!
//! Bounds: the successor never blocks on the link (a full socket buffer drops the run,
//! counted); the predecessor's inboxes are the steering inboxes with their limits. Only the two
//! processes hold the socket pair's ends (inherited by the successor, nobody else can connect
//! to it), and the predecessor accepts only well-formed messages for addresses it serves.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use quinn::udp::{EcnCodepoint, RecvMeta};

use super::steer::SteerRegistry;

/// The environment variable naming the successor's end of the link.
pub const FORWARD_FD_ENV: &str = "V2SP_QUIC_FORWARD_FD";
const VERSION: u8 = 1;
const HEADER: usize = 59;
/// Largest run: quinn's receive buffers hold at most 64 KiB of datagrams per slot.
const MAX_RUN: usize = 64 * 1024;

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let v6 = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&v6.octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn get_addr(b: &[u8]) -> Option<SocketAddr> {
    let octets: [u8; 16] = b.get(..16)?.try_into().ok()?;
    let port = u16::from_be_bytes(b.get(16..18)?.try_into().ok()?);
    Some(SocketAddr::new(Ipv6Addr::from(octets).to_canonical(), port))
}

/// One run as a message (appended to `out`).
pub(super) fn encode(listen: SocketAddr, core: usize, data: &[u8], meta: &RecvMeta, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.push(meta.ecn.map_or(0, |e| e as u8));
    out.extend_from_slice(&u16::try_from(core).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&u16::try_from(meta.stride).unwrap_or(0).to_be_bytes());
    put_addr(out, listen);
    put_addr(out, meta.addr);
    match meta.dst_ip {
        None => out.extend_from_slice(&[0; 17]),
        Some(IpAddr::V4(v4)) => {
            out.push(4);
            out.extend_from_slice(&v4.to_ipv6_mapped().octets());
        }
        Some(IpAddr::V6(v6)) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(data);
}

/// A message back into (listening address, core, data, how it was received); `None` for
/// anything malformed.
pub(super) fn decode(msg: &[u8]) -> Option<(SocketAddr, usize, &[u8], RecvMeta)> {
    if *msg.first()? != VERSION {
        return None;
    }
    let ecn = match *msg.get(1)? {
        0 => None,
        bits => Some(EcnCodepoint::from_bits(bits)?),
    };
    let core = usize::from(u16::from_be_bytes(msg.get(2..4)?.try_into().ok()?));
    let stride = usize::from(u16::from_be_bytes(msg.get(4..6)?.try_into().ok()?));
    let listen = get_addr(msg.get(6..24)?)?;
    let addr = get_addr(msg.get(24..42)?)?;
    let ip: [u8; 16] = msg.get(43..59)?.try_into().ok()?;
    let dst_ip = match *msg.get(42)? {
        0 => None,
        4 => Some(IpAddr::V4(Ipv6Addr::from(ip).to_ipv4_mapped()?)),
        6 => Some(IpAddr::V6(Ipv6Addr::from(ip))),
        _ => return None,
    };
    let data = msg.get(HEADER..)?;
    if data.is_empty() || data.len() > MAX_RUN || stride > data.len() {
        return None;
    }
    let meta = RecvMeta {
        addr,
        len: data.len(),
        stride: if stride == 0 { data.len() } else { stride },
        ecn,
        dst_ip,
    };
    Some((listen, core, data, meta))
}

/// The successor's end: where the predecessor's packets go.
pub(crate) struct ForwardLink {
    sock: UnixDatagram,
    alive: AtomicBool,
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl ForwardLink {
    pub(super) fn new(sock: UnixDatagram) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(ForwardLink {
            sock,
            alive: AtomicBool::new(true),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Whether the predecessor may still hold connections.
    pub(super) fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Sends one run; never blocks. A full link drops the run; a closed one (the predecessor
    /// exited) is marked dead, after which packets of its ids stay here (and are reset).
    pub(super) fn send(&self, listen: SocketAddr, core: usize, data: &[u8], meta: &RecvMeta) {
        // One message buffer per core thread, kept: no allocation per forwarded run.
        thread_local!(static MSG: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) });
        let sent = MSG.with_borrow_mut(|msg| {
            msg.clear();
            encode(listen, core, data, meta, msg);
            self.sock.send(msg)
        });
        match sent {
            Ok(_) => {
                let n = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() && n >= 16 {
                    tracing::info!(
                        forwarded = n,
                        "QUIC packets of the predecessor's connections handed to it"
                    );
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n,
                        "QUIC packets for the predecessor dropped: its link is full"
                    );
                }
            }
            Err(e) => {
                if self.alive.swap(false, Ordering::Relaxed) {
                    tracing::info!("the predecessor no longer takes QUIC packets ({e}); its connections are reset from now on");
                }
            }
        }
    }
}

/// The successor's link to the predecessor, when it was started with one.
static TO_PREDECESSOR: OnceLock<Arc<ForwardLink>> = OnceLock::new();

/// In a successor, first thing in `main`: takes the link the predecessor passed (the
/// descriptor is checked to be a unix datagram socket). Whether there is one.
pub fn adopt_from_env() -> bool {
    let Some(fd) = std::env::var(FORWARD_FD_ENV).ok().and_then(|v| v.parse().ok()) else {
        return false;
    };
    let Some(owned) = crate::sys::adopt_inherited_fd(fd) else {
        return false;
    };
    let is_dgram_unix = socket2::SockRef::from(&owned)
        .r#type()
        .is_ok_and(|t| t == socket2::Type::DGRAM)
        && socket2::SockRef::from(&owned)
            .local_addr()
            .is_ok_and(|a| a.is_unix());
    if !is_dgram_unix {
        tracing::warn!("{FORWARD_FD_ENV} does not name a unix datagram socket; QUIC connections of the predecessor will be reset");
        return false;
    }
    match ForwardLink::new(UnixDatagram::from(owned)) {
        Ok(l) => TO_PREDECESSOR.set(Arc::new(l)).is_ok(),
        Err(e) => {
            tracing::warn!("QUIC link to the predecessor: {e}");
            false
        }
    }
}

pub(super) fn link_to_predecessor() -> Option<Arc<ForwardLink>> {
    TO_PREDECESSOR.get().cloned()
}

/// The predecessor's end, made with the successor's, until a core starts reading it.
static FROM_SUCCESSOR: Mutex<Option<UnixDatagram>> = Mutex::new(None);

/// In the process being upgraded: a fresh link; the successor's end is returned (to be
/// inherited), ours is kept for [`start_receiver`].
pub fn pair_for_successor() -> io::Result<OwnedFd> {
    let (ours, theirs) = UnixDatagram::pair()?;
    // Room for bursts while the receiver thread is scheduled: ~4 MiB of runs.
    let _ = socket2::SockRef::from(&ours).set_recv_buffer_size(4 << 20);
    let _ = socket2::SockRef::from(&theirs).set_send_buffer_size(4 << 20);
    *FROM_SUCCESSOR.lock().unwrap_or_else(|p| p.into_inner()) = Some(ours);
    theirs.as_fd().try_clone_to_owned()
}

/// Drops a link made for a successor that did not take it (it failed, or is an older binary).
pub fn forget_pair() {
    FROM_SUCCESSOR.lock().unwrap_or_else(|p| p.into_inner()).take();
}

/// Set when the successor said it took the link (its ready byte is `Q`).
static SUCCESSOR_FORWARDS: AtomicBool = AtomicBool::new(false);

/// The successor serves and took the link (`true`), or serves without it, being an older
/// binary (`false`: the link is dropped and QUIC connections are closed as before).
pub fn successor_ready(forwards: bool) {
    SUCCESSOR_FORWARDS.store(forwards, Ordering::Relaxed);
    if !forwards {
        forget_pair();
    }
}

pub(super) fn successor_forwards() -> bool {
    SUCCESSOR_FORWARDS.load(Ordering::Relaxed)
}

/// In the process being upgraded, once the successor serves: a thread that puts the runs the
/// successor sends into the inboxes of `registry`'s cores (called by every core; the first
/// takes the link). It ends with the process.
pub(super) fn start_receiver(registry: Arc<SteerRegistry>) {
    let Some(sock) = FROM_SUCCESSOR.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("v2sp-quic-handoff".into())
        .spawn(move || {
            let mut buf = vec![0u8; HEADER + MAX_RUN];
            let mut bad = 0u64;
            loop {
                let n = match sock.recv(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let Some((listen, core, data, meta)) = buf.get(..n).and_then(decode) else {
                    bad += 1;
                    continue;
                };
                match registry.find(listen) {
                    Some(group) => group.hand_over(core, data, meta),
                    None => bad += 1,
                }
            }
            if bad > 0 {
                tracing::debug!(bad, "QUIC hand-off messages for no endpoint of this process");
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("QUIC hand-off thread: {e}; the predecessor's QUIC connections will time out");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn runs_cross_intact_and_garbage_is_refused() {
        for (listen, src, dst) in [
            ("127.0.0.1:443", "198.51.100.7:5000", Some("127.0.0.1")),
            ("[::]:8443", "[2001:db8::1]:7", Some("2001:db8::2")),
            ("0.0.0.0:1", "203.0.113.1:65535", None),
        ] {
            let meta = RecvMeta {
                addr: src.parse().unwrap(),
                len: 3000,
                stride: 1200,
                ecn: Some(EcnCodepoint::Ect0),
                dst_ip: dst.map(|d| d.parse().unwrap()),
            };
            let data: Vec<u8> = (0..3000).map(|i| i as u8).collect();
            let mut msg = Vec::new();
            encode(listen.parse().unwrap(), 5, &data, &meta, &mut msg);
            assert_eq!(msg.len(), HEADER + data.len());
            let (l, core, d, m) = decode(&msg).unwrap();
            assert_eq!((l, core, d), (listen.parse().unwrap(), 5, &data[..]));
            assert_eq!(
                (m.addr, m.len, m.stride, m.ecn, m.dst_ip),
                (meta.addr, 3000, 1200, meta.ecn, meta.dst_ip)
            );
            // Every prefix is refused (no data, or a cut header), as are other versions.
            for cut in 0..=HEADER {
                assert!(decode(&msg[..cut]).is_none(), "prefix {cut}");
            }
            let mut other = msg.clone();
            other[0] = 2;
            assert!(decode(&other).is_none());
            let mut wide = msg.clone();
            wide[4..6].copy_from_slice(&4000u16.to_be_bytes());
            assert!(decode(&wide).is_none(), "a stride longer than the run");
        }
    }

    #[test]
    fn a_closed_link_is_marked_dead_and_a_full_one_drops() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let link = ForwardLink::new(a).unwrap();
        let meta = RecvMeta {
            addr: "127.0.0.1:9".parse().unwrap(),
            len: 10,
            stride: 10,
            ecn: None,
            dst_ip: None,
        };
        link.send("127.0.0.1:1".parse().unwrap(), 1, &[1; 10], &meta);
        let mut buf = [0u8; 128];
        assert_eq!(b.recv(&mut buf).unwrap(), HEADER + 10);
        for _ in 0..100_000 {
            link.send("127.0.0.1:1".parse().unwrap(), 1, &[1; 1000], &meta);
            if link.dropped.load(Ordering::Relaxed) > 0 {
                break;
            }
        }
        assert!(
            link.dropped.load(Ordering::Relaxed) > 0,
            "never blocks: drops when full"
        );
        assert!(link.alive());
        drop(b);
        link.send("127.0.0.1:1".parse().unwrap(), 1, &[1; 10], &meta);
        assert!(!link.alive());
    }
}
