//! Salamander ([`crate::proto::quic::salamander`]) on a QUIC endpoint's UDP socket: a
//! [`quinn::AsyncUdpSocket`] around quinn's own tokio socket, so quinn-udp still does the
//! system calls (batches, GSO, GRO, ECN, source addresses) and this layer only rewrites the
//! bytes. Used only for nodes with `obfs: salamander`; plain nodes get quinn's socket as is.
//!
//! ```text
//! quinn ──Transmit (n QUIC packets, segment s)──▶ try_send ──▶ n × (salt ‖ packet ⊕ key),
//!                                                               segment s + 8 ──▶ quinn-udp
//! quinn ◀──payloads moved left, stride s - 8──── poll_recv ◀── GRO buffer: n × (salt ‖ …),
//!                                                               stride s ◀── quinn-udp
//! ```
//!
//! GSO and GRO stay on. Send: every QUIC packet of a GSO batch gets its own salt (the peer
//! opens datagram by datagram), so each segment grows by 8 bytes and the batch is sent with
//! segment size + 8; the layout stays valid GSO (all segments equal but the last, which may be
//! shorter). Receive: each datagram of a GRO buffer is opened in place and its payload moved
//! left over the salts before it, so the buffer becomes a valid GRO buffer of stride − 8
//! for quinn. Turning them off would cost a system call per datagram both ways for nothing:
//! the per-segment work is the same either way.
//!
//! No allocation per datagram: receiving works in quinn's buffer; sending writes into one
//! buffer per core thread (see [`SCRATCH`]).

use std::cell::RefCell;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

use crate::proto::quic::salamander::{Salamander, SALT_LEN};

/// A UDP socket whose datagrams are Salamander-obfuscated on the wire.
pub(super) struct SalamanderSocket {
    /// quinn's tokio socket on the same descriptor.
    inner: Arc<dyn AsyncUdpSocket>,
    obfs: Salamander,
}

impl SalamanderSocket {
    /// Wraps a non-blocking std socket for quinn (registered with the current tokio runtime,
    /// as [`quinn::Endpoint::new`] would).
    pub(super) fn wrap(sock: std::net::UdpSocket, obfs: Salamander) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner = quinn::TokioRuntime.wrap_udp_socket(sock)?;
        Ok(Arc::new(SalamanderSocket { inner, obfs }))
    }
}

impl fmt::Debug for SalamanderSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalamanderSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Where outgoing datagrams are sealed, one per thread. quinn's `try_send` takes `&self` on
/// a `Sync` socket, so a buffer per socket would need a lock on every send; each core's
/// endpoints are driven by that core's own current-thread runtime, so a thread-local buffer
/// is never contended and is, in effect, per core. It keeps the capacity of the largest
/// batch sent (a GSO batch is at most a few dozen KiB).
struct SendScratch {
    buf: Vec<u8>,
    /// Salts: they travel in the clear and only have to differ, so a fast generator seeded
    /// once per thread will do (the reference implementation uses a non-cryptographic one too).
    rng: SmallRng,
}

thread_local! {
    static SCRATCH: RefCell<SendScratch> = RefCell::new(SendScratch {
        buf: Vec::new(),
        rng: SmallRng::from_rng(&mut rand::rng()),
    });
}

impl AsyncUdpSocket for SalamanderSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if transmit.contents.is_empty() {
            return Ok(());
        }
        // On WouldBlock quinn offers the same transmit again once the socket is writable; it
        // is sealed anew then (fresh salts): a hash per packet, and no state between calls.
        SCRATCH.with_borrow_mut(|SendScratch { buf, rng }| {
            seal_transmit(&self.obfs, rng, transmit, buf);
            self.inner.try_send(&Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: buf,
                segment_size: transmit.segment_size.map(|s| s + SALT_LEN),
                src_ip: transmit.src_ip,
            })
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
        for (buf, m) in bufs.iter_mut().zip(meta.iter_mut()).take(n) {
            open_received(&self.obfs, buf, m);
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Seals every QUIC packet of `transmit` (one, or a GSO batch of `segment_size` each) with its
/// own salt into `buf` (cleared first), keeping the batch layout.
fn seal_transmit(obfs: &Salamander, rng: &mut SmallRng, transmit: &Transmit, buf: &mut Vec<u8>) {
    buf.clear();
    let segment = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
    for packet in transmit.contents.chunks(segment) {
        obfs.seal_into(rng.next_u64().to_le_bytes(), packet, buf);
    }
}

/// Opens the datagrams quinn-udp put in `buf` (one, or a GRO run of `stride` each, the last
/// possibly shorter) and compacts their payloads to the front with stride − 8. A datagram
/// without payload can only be the last one (all others are `stride` long), so the run stays
/// regular; when nothing is left, `len` is 0 and quinn skips the buffer.
fn open_received(obfs: &Salamander, buf: &mut [u8], meta: &mut RecvMeta) {
    let len = meta.len.min(buf.len());
    let stride = meta.stride;
    if stride <= SALT_LEN {
        // Every datagram of the run is at most 8 bytes: none carries anything.
        meta.len = 0;
        return;
    }
    let (mut at, mut out) = (0, 0);
    while at < len {
        let end = len.min(at + stride);
        // `out` ≤ `at`: each opened datagram shrank by 8, so payloads only move left.
        if let Some(n) = obfs.open_within(buf, at..end, out) {
            out += n;
        }
        at = end;
    }
    meta.len = out;
    meta.stride = stride - SALT_LEN;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::future::poll_fn;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;

    fn meta(len: usize, stride: usize) -> RecvMeta {
        RecvMeta {
            len,
            stride,
            ..RecvMeta::default()
        }
    }

    fn sealed(obfs: &Salamander, salt: u8, payload: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        obfs.seal_into([salt; SALT_LEN], payload, &mut d);
        d
    }

    #[test]
    fn a_gro_run_is_opened_and_compacted() {
        let obfs = Salamander::new(b"gro");
        let packets: Vec<Vec<u8>> = vec![vec![1; 100], vec![2; 100], vec![3; 100], vec![4; 37]];
        let mut buf: Vec<u8> = packets
            .iter()
            .enumerate()
            .flat_map(|(k, p)| sealed(&obfs, k as u8, p))
            .collect();
        let total = buf.len();
        buf.resize(total + 50, 0xee); // quinn's buffer is larger than what was received
        let mut m = meta(total, 108);
        open_received(&obfs, &mut buf, &mut m);
        assert_eq!((m.len, m.stride), (337, 100));
        assert_eq!(buf[..337], packets.concat()[..]);

        // A last datagram with no payload is dropped; the rest stays a regular run.
        let mut buf = [sealed(&obfs, 1, &[7; 20]), sealed(&obfs, 2, &[8; 20]), vec![0; 8]].concat();
        let mut m = meta(buf.len(), 28);
        open_received(&obfs, &mut buf, &mut m);
        assert_eq!((m.len, m.stride), (40, 20));
        assert_eq!(buf[..40], [[7u8; 20], [8u8; 20]].concat()[..]);

        // A single datagram (stride = len), and datagrams too short to carry anything.
        let mut buf = sealed(&obfs, 9, b"one");
        let mut m = meta(11, 11);
        open_received(&obfs, &mut buf, &mut m);
        assert_eq!((m.len, m.stride, &buf[..3]), (3, 3, &b"one"[..]));
        for (len, stride) in [(8, 8), (24, 8), (0, 0), (3, 3)] {
            let mut buf = vec![5u8; 32];
            let mut m = meta(len, stride);
            open_received(&obfs, &mut buf, &mut m);
            assert_eq!(m.len, 0, "len {len}, stride {stride}");
        }
    }

    #[test]
    fn a_gso_batch_gets_a_salt_per_packet() {
        let obfs = Salamander::new(b"gso");
        let contents: Vec<u8> = (0..250u32).map(|i| i as u8).collect();
        let t = Transmit {
            destination: (Ipv4Addr::LOCALHOST, 9).into(),
            ecn: None,
            contents: &contents,
            segment_size: Some(100),
            src_ip: None,
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let mut buf = b"stale".to_vec();
        seal_transmit(&obfs, &mut rng, &t, &mut buf);
        assert_eq!(buf.len(), 250 + 3 * SALT_LEN);
        let mut salts = Vec::new();
        for (k, d) in buf.chunks(108).enumerate() {
            salts.push(d[..SALT_LEN].to_vec());
            let mut d = d.to_vec();
            let n = obfs.open(&mut d).unwrap();
            assert_eq!(d[..n], contents[k * 100..(k * 100 + 100).min(250)]);
        }
        salts.dedup();
        assert_eq!(salts.len(), 3, "one salt per packet");
    }

    /// Sends as quinn does: wait until the socket is writable, then try (tokio's readiness
    /// starts out unknown, so a fresh socket's first `try_send` says WouldBlock).
    async fn send(sock: &Arc<dyn AsyncUdpSocket>, t: &Transmit<'_>) {
        let mut poller = sock.clone().create_io_poller();
        for _ in 0..100 {
            poll_fn(|cx| poller.as_mut().poll_writable(cx)).await.unwrap();
            match sock.try_send(t) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("send: {e}"),
            }
        }
        panic!("never writable");
    }

    /// Through the kernel: a GSO batch sent by one Salamander socket arrives whole at another
    /// (over loopback a GRO receiver gets it as one run, stride 1208 on the wire and 1200
    /// after opening, where the kernel does GSO and GRO; one datagram at a time elsewhere),
    /// and a plain peer sees only salted datagrams.
    #[test]
    fn sockets_talk_salamander_over_loopback() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let obfs = Salamander::new(b"loopback");
            let std_sock = || {
                let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            };
            let a = SalamanderSocket::wrap(std_sock(), obfs.clone()).unwrap();
            let b = SalamanderSocket::wrap(std_sock(), obfs.clone()).unwrap();
            let plain = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

            // A batch as large as the socket sends at once: 3 packets of 1200, the last 700.
            let segments = a.max_transmit_segments().min(3);
            let contents: Vec<u8> = (0..1200 * (segments - 1) + 700)
                .map(|i| (i % 251) as u8)
                .collect();
            let mut t = Transmit {
                destination: b.local_addr().unwrap(),
                ecn: None,
                contents: &contents,
                segment_size: (segments > 1).then_some(1200),
                src_ip: None,
            };
            send(&a, &t).await;
            let mut got = Vec::new();
            let mut storage = vec![0u8; 64 * 1024];
            while got.len() < contents.len() {
                let mut bufs = [IoSliceMut::new(&mut storage)];
                let mut metas = [RecvMeta::default()];
                let n = tokio::time::timeout(
                    Duration::from_secs(5),
                    poll_fn(|cx| b.poll_recv(cx, &mut bufs, &mut metas)),
                )
                .await
                .expect("datagrams from the Salamander socket")
                .unwrap();
                assert_eq!(n, 1);
                assert!(metas[0].stride == 1200 || metas[0].stride == metas[0].len);
                got.extend_from_slice(&bufs[0][..metas[0].len]);
            }
            assert_eq!(got, contents);

            // The same packet to a plain socket: salt ‖ obfuscated, opened by the codec.
            t.destination = plain.local_addr().unwrap();
            t.contents = &contents[..500];
            t.segment_size = None;
            send(&a, &t).await;
            let mut d = [0u8; 2048];
            let n = plain.recv(&mut d).unwrap();
            assert_eq!(n, 500 + SALT_LEN);
            assert_ne!(d[SALT_LEN..n], contents[..500], "obfuscated on the wire");
            let m = obfs.open(&mut d[..n]).unwrap();
            assert_eq!(d[..m], contents[..500]);
        });
    }
}
