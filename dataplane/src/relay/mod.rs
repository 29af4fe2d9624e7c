//! The relay engine: after a handshake, moves bytes between client and destination until both
//! directions are done, a timeout fires, or the connection is cancelled (user removed, kick,
//! node removed, shutdown).
//!
//! * Copy path (`codec` present or splice off): wait for readiness, *then* take a pooled buffer,
//!   `try_read`, transform, write, give the buffer back — idle connections hold no memory.
//! * Splice path (`codec: None`): after `SPLICE_AFTER` copied bytes per direction, `splice(2)`
//!   socket → pooled pipe → socket, non-blocking, driven by tokio readiness on the core thread
//!   (never IORING_OP_SPLICE: it always goes to io-wq).
//! * Every read/write/splice call counts its bytes (upload = plaintext written to the
//!   destination, download = plaintext read from the destination) and reserves them from the
//!   user's speed-limit bucket.
//! * Proxy outbounds that re-frame the stream (Shadowsocks) add a destination-side codec
//!   ([`relay_upstream`]): upload plaintext is sealed for the destination after it was counted,
//!   download wire bytes are opened and the plaintext counted, so every byte is still counted
//!   once, as plaintext; those connections always take the copy path.
//! * Half-close: EOF in one direction becomes `shutdown(Write)` on the other socket while the
//!   other direction continues, under the shorter uplink-only/downlink-only idle timeout.

pub mod account;
pub mod pool;

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::limits::gcra::Bucket;
use crate::proto::{StreamCodec, UpstreamCodec};
use crate::sys;
pub use pool::{BufPool, PipePool};

/// Relay timeouts (from `dpconfig::Timeouts`).
#[derive(Clone, Copy, Debug)]
pub struct RelayTimeouts {
    pub idle: Duration,
    pub uplink_only: Duration,
    pub downlink_only: Duration,
}

impl From<&v2sp_shared::dpconfig::Timeouts> for RelayTimeouts {
    fn from(t: &v2sp_shared::dpconfig::Timeouts) -> Self {
        RelayTimeouts {
            idle: Duration::from_secs(u64::from(t.conn_idle.max(1))),
            uplink_only: Duration::from_secs(u64::from(t.uplink_only.max(1))),
            downlink_only: Duration::from_secs(u64::from(t.downlink_only.max(1))),
        }
    }
}

/// Control block of one connection (held by the core's registry): cancellation, and the idle
/// clock the core's periodic sweep reads ([`ConnCtl::sweep`]). Idle timeouts live here rather
/// than in a timer per connection: a tokio `Sleep` plus the `Notify` that re-arms it on a
/// half-close cost ~230 bytes of every idle connection's task, and a sweep over the registry
/// a few times a second costs nothing measurable.
pub struct ConnCtl {
    cancelled: Cell<bool>,
    timed_out: Cell<bool>,
    notify: tokio::sync::Notify,
    /// When bytes last moved in either direction.
    last: Cell<Instant>,
    /// Allowed silence: unlimited until the relay starts, then `conn_idle`, shrunk to the
    /// uplink-only/downlink-only timeout after a half-close (never lengthened).
    idle: Cell<Duration>,
}

impl Default for ConnCtl {
    fn default() -> Self {
        ConnCtl {
            cancelled: Cell::new(false),
            timed_out: Cell::new(false),
            notify: tokio::sync::Notify::new(),
            last: Cell::new(Instant::now()),
            idle: Cell::new(Duration::MAX),
        }
    }
}

impl ConnCtl {
    pub fn cancel(&self) {
        self.cancelled.set(true);
        self.notify.notify_one();
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.get()
    }
    pub async fn cancelled(&self) {
        while !self.cancelled.get() {
            self.notify.notified().await;
        }
    }
    /// Whether the connection was closed by the idle sweep.
    pub fn timed_out(&self) -> bool {
        self.timed_out.get()
    }
    /// Starts the idle clock (the relay phase begins).
    pub fn arm(&self, idle: Duration) {
        self.touch();
        self.idle.set(idle);
    }
    /// Bytes moved.
    pub fn touch(&self) {
        self.last.set(Instant::now());
    }
    /// Switches to a half-closed idle timeout (never lengthens it).
    pub fn half_closed(&self, t: Duration) {
        self.touch();
        if t < self.idle.get() {
            self.idle.set(t);
        }
    }
    /// Called by the owner's periodic sweep: cancels the connection if it has been silent for
    /// its idle allowance at `now`. Returns true when it did.
    pub fn sweep(&self, now: Instant) -> bool {
        if self.cancelled.get() || now.saturating_duration_since(self.last.get()) < self.idle.get() {
            return false;
        }
        self.timed_out.set(true);
        self.cancel();
        true
    }
}

/// Counts payload bytes (called on every read/write/splice).
pub trait Meter {
    fn up(&self, n: u64);
    fn down(&self, n: u64);
}

/// How a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions reached EOF.
    Done,
    IdleTimeout,
    Cancelled,
    Error(io::Error),
}

/// Everything the relay needs from its core and connection.
pub struct RelayEnv<'a> {
    pub bufs: &'a BufPool,
    pub pipes: &'a PipePool,
    pub meter: &'a dyn Meter,
    pub bucket: &'a Bucket,
    pub timeouts: RelayTimeouts,
    pub ctl: &'a ConnCtl,
    /// Use splice when the codec is `None`.
    pub splice: bool,
    /// The core's io_uring driver (uring backend): plain copies use its recv/send.
    pub uring: Option<&'a std::rc::Rc<crate::runtime::uring::UringIo>>,
}

impl RelayEnv<'_> {
    /// The connection's accounting (the relay's own loops count per write and touch the idle
    /// clock themselves; they take only the pacing from it).
    pub fn account(&self) -> account::Account<'_> {
        account::Account {
            meter: self.meter,
            bucket: self.bucket,
            ctl: Some(self.ctl),
        }
    }
}

/// The relay's view of its connection's idle clock.
type Activity = ConnCtl;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// client → destination
    Up,
    /// destination → client
    Down,
}

/// Relays until done. `pending_up` are client wire bytes read after the handshake that belong
/// to the stream (passed through the codec like any later read).
pub async fn relay(
    env: &RelayEnv<'_>,
    client: &TcpStream,
    dest: &TcpStream,
    pending_up: Vec<u8>,
    codec: Option<Box<dyn StreamCodec>>,
) -> RelayEnd {
    relay_upstream(env, client, dest, pending_up, codec, None).await
}

/// The destination side's codec (a proxy outbound's framing), shared by both directions.
type UpCodec<'a> = Option<&'a RefCell<Box<dyn UpstreamCodec>>>;

/// As [`relay`], with the destination speaking a proxy outbound's framing (`upstream`).
pub async fn relay_upstream(
    env: &RelayEnv<'_>,
    client: &TcpStream,
    dest: &TcpStream,
    pending_up: Vec<u8>,
    codec: Option<Box<dyn StreamCodec>>,
    upstream: Option<Box<dyn UpstreamCodec>>,
) -> RelayEnd {
    // Idle timeouts are enforced by the owner's sweep over `env.ctl` (see `ConnCtl`).
    let act: &Activity = env.ctl;
    act.arm(env.timeouts.idle);
    let codec = codec.map(RefCell::new);
    let upstream = upstream.map(RefCell::new);
    let up = upstream.as_ref();
    // Set by the upload side when the codec has control frames for the client; the download
    // side (the only writer to the client) sends them.
    let control = tokio::sync::Notify::new();
    // Set by the download side each time it has written the codec's control frames: the
    // upload side waits for it while the codec's output is over budget.
    let drained = tokio::sync::Notify::new();
    let both = async {
        match &codec {
            Some(c) => {
                let ctl_up = CodecCtl {
                    codec: c,
                    control: &control,
                    drained: &drained,
                };
                tokio::try_join!(
                    copy_dir(env, act, Dir::Up, client, dest, Some(ctl_up), up, pending_up),
                    copy_dir(env, act, Dir::Down, dest, client, Some(ctl_up), up, Vec::new()),
                )
            }
            None if up.is_some() => {
                tokio::try_join!(
                    copy_dir(env, act, Dir::Up, client, dest, None, up, pending_up),
                    copy_dir(env, act, Dir::Down, dest, client, None, up, Vec::new()),
                )
            }
            None if env.splice && pending_up.is_empty() => {
                tokio::try_join!(
                    copy_then_splice(env, act, Dir::Up, client, dest),
                    copy_then_splice(env, act, Dir::Down, dest, client),
                )
            }
            None if env.uring.is_some() && pending_up.is_empty() => {
                tokio::try_join!(
                    copy_dir_uring(env, act, Dir::Up, client, dest),
                    copy_dir_uring(env, act, Dir::Down, dest, client),
                )
            }
            None => {
                tokio::try_join!(
                    copy_dir(env, act, Dir::Up, client, dest, None, None, pending_up),
                    copy_dir(env, act, Dir::Down, dest, client, None, None, Vec::new()),
                )
            }
        }
    };
    tokio::select! {
        r = both => match r { Ok(_) => RelayEnd::Done, Err(e) => RelayEnd::Error(e) },
        _ = env.ctl.cancelled() => if env.ctl.timed_out() { RelayEnd::IdleTimeout } else { RelayEnd::Cancelled },
    }
}

/// Waits until `s` is readable. Unlike `TcpStream::readable()`, whose future carries a
/// 150-byte waiter node, this polls the socket's own reader slot, so an idle connection parked
/// here costs 16 bytes of task state. The slot holds one waker per direction; each socket is
/// read by exactly one direction of one task, so nothing else competes for it.
fn read_ready(s: &TcpStream) -> impl std::future::Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| s.poll_read_ready(cx))
}

fn finish_dir(env: &RelayEnv<'_>, act: &Activity, dir: Dir, dst: &TcpStream) {
    let _ = SockRef::from(dst).shutdown(Shutdown::Write);
    match dir {
        Dir::Up => act.half_closed(env.timeouts.downlink_only),
        Dir::Down => act.half_closed(env.timeouts.uplink_only),
    }
}

/// Writes all of `data`, counting each completed write as upload when `dir` is Up.
async fn write_all(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    dst: &TcpStream,
    data: &[u8],
) -> io::Result<()> {
    write_all_counting(env, act, dir == Dir::Up, dst, data).await
}

/// Writes all of `data`; each completed write counts as upload when `count_up`.
async fn write_all_counting(
    env: &RelayEnv<'_>,
    act: &Activity,
    count_up: bool,
    dst: &TcpStream,
    mut data: &[u8],
) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => {
                act.touch();
                if count_up {
                    env.meter.up(m as u64);
                }
                data = data.get(m..).unwrap_or_default();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn limit(env: &RelayEnv<'_>, n: usize) {
    env.account().pace(n).await;
}

/// A connection's codec and the signal that it has control frames for the client.
#[derive(Clone, Copy)]
struct CodecCtl<'a> {
    codec: &'a RefCell<Box<dyn StreamCodec>>,
    control: &'a tokio::sync::Notify,
    /// The download side wrote the control frames (see [`StreamCodec::output_over_budget`]).
    drained: &'a tokio::sync::Notify,
}

/// Sends the codec's end-of-stream bytes to the client (download side, at the destination's
/// EOF, before the FIN).
async fn send_close(
    env: &RelayEnv<'_>,
    act: &Activity,
    c: CodecCtl<'_>,
    client: &TcpStream,
) -> io::Result<()> {
    let mut out = Vec::new();
    c.codec
        .borrow_mut()
        .close_output(&mut out)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    write_all(env, act, Dir::Down, client, &out).await
}

/// Sends the codec's control frames to the client (download side only).
async fn send_control(
    env: &RelayEnv<'_>,
    act: &Activity,
    c: CodecCtl<'_>,
    client: &TcpStream,
) -> io::Result<()> {
    let mut out = Vec::new();
    c.codec
        .borrow_mut()
        .take_control(&mut out)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    write_all(env, act, Dir::Down, client, &out).await?;
    c.drained.notify_one();
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn copy_dir(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    src: &TcpStream,
    dst: &TcpStream,
    codec: Option<CodecCtl<'_>>,
    up: UpCodec<'_>,
    pending: Vec<u8>,
) -> io::Result<()> {
    // Partial frame carried between reads (client wire bytes, Up with a codec only).
    let mut carry: Vec<u8> = Vec::new();
    // The codec reported the client's end of stream (Up): the destination got its FIN.
    let mut input_ended = false;
    let mut since_yield = 0usize;
    if !pending.is_empty() {
        Box::pin(forward(env, act, dir, dst, codec, up, &mut carry, &pending)).await?;
    }
    loop {
        match codec {
            Some(c) if dir == Dir::Down => {
                if c.codec.borrow().send_blocked() {
                    // The client's flow control holds what was sealed: read nothing more
                    // until its window update releases it (as control bytes).
                    c.control.notified().await;
                    Box::pin(send_control(env, act, c, dst)).await?;
                    continue;
                }
                tokio::select! {
                    r = read_ready(src) => r?,
                    _ = c.control.notified() => {
                        Box::pin(send_control(env, act, c, dst)).await?;
                        continue;
                    }
                }
            }
            Some(c) => {
                // The client asks for replies faster than it reads them: read nothing more
                // until the download side has sent what is queued.
                while c.codec.borrow().output_over_budget() {
                    c.control.notify_one();
                    c.drained.notified().await;
                }
                read_ready(src).await?
            }
            None => read_ready(src).await?,
        }
        // Server→client through a codec that seals in place (TLS record layer): read
        // straight into the records' payload slots, no plaintext copy.
        if let Some(c) = codec.filter(|_| dir == Dir::Down && up.is_none()) {
            let layout = c.codec.borrow().seal_layout();
            if let Some(l) = layout {
                match Box::pin(seal_read_in_place(env, act, src, dst, c, l)).await? {
                    Some(_) => continue,
                    None => {
                        Box::pin(send_close(env, act, c, dst)).await?;
                        finish_dir(env, act, dir, dst);
                        return Ok(());
                    }
                }
            }
        }
        let mut buf = env.bufs.take();
        let grant = env.bucket.grant_len(buf.len());
        let n = match src.try_read(buf.get_mut(..grant).unwrap_or_default()) {
            Ok(0) => {
                env.bufs.put(buf);
                if let Some(c) = codec.filter(|_| dir == Dir::Down) {
                    Box::pin(send_close(env, act, c, dst)).await?;
                }
                finish_dir(env, act, dir, dst);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) => {
                env.bufs.put(buf);
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
        };
        act.touch();
        let r = Box::pin(forward(
            env,
            act,
            dir,
            dst,
            codec,
            up,
            &mut carry,
            buf.get(..n).unwrap_or_default(),
        ))
        .await;
        env.bufs.put(buf);
        r?;
        // Fairness: tokio's budget counts reads, not bytes, and a codec's work per read can
        // be large (a buffer of ws pings or h2 control frames): after [`YIELD_EVERY`] bytes,
        // let the core's other connections (and its accept loop) run.
        since_yield += n;
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        // The client ended its side inside the protocol (gRPC END_STREAM, TLS close_notify):
        // half-close the destination once, and keep reading for the codec's control frames.
        if dir == Dir::Up && !input_ended && codec.is_some_and(|c| c.codec.borrow().input_ended()) {
            input_ended = true;
            finish_dir(env, act, dir, dst);
        }
        // A codec that went transparent (Vision's direct mode) hands this direction to splice.
        if env.splice
            && up.is_none()
            && carry.is_empty()
            && codec.is_some_and(|c| c.codec.borrow().passthrough(dir == Dir::Up))
        {
            return splice_dir(env, act, dir, src, dst).await;
        }
    }
}

/// Draws on the speed limit, then transforms and writes one chunk. Callers box it: its state
/// (a timer, the write) exists only while bytes move, so an idle connection's task, parked on
/// readiness, does not carry it.
#[allow(clippy::too_many_arguments)]
async fn forward(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    dst: &TcpStream,
    codec: Option<CodecCtl<'_>>,
    up: UpCodec<'_>,
    carry: &mut Vec<u8>,
    data: &[u8],
) -> io::Result<()> {
    limit(env, data.len()).await;
    match up {
        None => process_chunk(env, act, dir, dst, codec, carry, data).await,
        Some(u) => through_upstream(env, act, dir, dst, codec, u, carry, data).await,
    }
}

/// Opens client wire bytes (after what `carry` held) into `out`; a partial frame stays in
/// `carry`, and the download side is told when the codec has control frames for the client.
fn open_client(c: CodecCtl<'_>, carry: &mut Vec<u8>, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let input: &[u8] = if carry.is_empty() {
        data
    } else {
        carry.extend_from_slice(data);
        &carry[..]
    };
    let mut codec = c.codec.borrow_mut();
    let used = codec.open(input, out).map_err(invalid)?;
    *carry = input.get(used..).unwrap_or_default().to_vec();
    if codec.has_control() {
        c.control.notify_one();
    }
    Ok(())
}

fn invalid(e: crate::proto::WireError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// One chunk on a connection whose destination speaks a proxy outbound's framing. Up: the
/// client's plaintext (opened by the client codec, if any) is counted, sealed for the
/// destination and written uncounted. Down: the destination's wire bytes are opened, the
/// plaintext counted and passed to the client (sealed by the client codec, if any).
#[allow(clippy::too_many_arguments)]
async fn through_upstream(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    dst: &TcpStream,
    codec: Option<CodecCtl<'_>>,
    up: &RefCell<Box<dyn UpstreamCodec>>,
    carry: &mut Vec<u8>,
    data: &[u8],
) -> io::Result<()> {
    let mut plain = env.bufs.take_vec();
    let mut out = env.bufs.take_vec();
    let res = match dir {
        Dir::Up => {
            let plain_ref: &[u8] = match codec {
                None => data,
                Some(c) => {
                    if let Err(e) = open_client(c, carry, data, &mut plain) {
                        env.bufs.put_vec(plain);
                        env.bufs.put_vec(out);
                        return Err(e);
                    }
                    &plain
                }
            };
            let sealed = up.borrow_mut().seal(plain_ref, &mut out).map_err(invalid);
            // Counted as the plaintext the user sent, once the destination has it all.
            let n = plain_ref.len() as u64;
            match sealed {
                Ok(()) => write_all_counting(env, act, false, dst, &out)
                    .await
                    .map(|()| env.meter.up(n)),
                Err(e) => Err(e),
            }
        }
        Dir::Down => {
            // Both directions run in one task: no `RefCell` borrow may live across an await.
            let opened = up.borrow_mut().open(data, &mut plain).map_err(invalid);
            match opened {
                Err(e) => Err(e),
                Ok(()) => {
                    env.meter.down(plain.len() as u64);
                    match codec {
                        None => write_all(env, act, Dir::Down, dst, &plain).await,
                        Some(CodecCtl { codec, .. }) => {
                            let sealed = codec.borrow_mut().seal(&plain, &mut out).map_err(invalid);
                            match sealed {
                                Ok(()) => write_all(env, act, Dir::Down, dst, &out).await,
                                Err(e) => Err(e),
                            }
                        }
                    }
                }
            }
        }
    };
    env.bufs.put_vec(plain);
    env.bufs.put_vec(out);
    res
}

async fn process_chunk(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    dst: &TcpStream,
    codec: Option<CodecCtl<'_>>,
    carry: &mut Vec<u8>,
    data: &[u8],
) -> io::Result<()> {
    let Some(c) = codec else {
        if dir == Dir::Down {
            env.meter.down(data.len() as u64);
        }
        return write_all(env, act, dir, dst, data).await;
    };
    let mut out = env.bufs.take_vec();
    let res = match dir {
        Dir::Up => open_client(c, carry, data, &mut out),
        Dir::Down => {
            env.meter.down(data.len() as u64);
            c.codec.borrow_mut().seal(data, &mut out).map_err(invalid)
        }
    };
    let r = match res {
        Ok(()) => write_all(env, act, dir, dst, &out).await,
        Err(e) => Err(e),
    };
    env.bufs.put_vec(out);
    r
}

/// One server→client read into `l`'s payload slots of a pooled buffer (vectored), sealed in
/// place and written. `None` at EOF; `Some(0)` when the socket had nothing after all.
async fn seal_read_in_place(
    env: &RelayEnv<'_>,
    act: &Activity,
    src: &TcpStream,
    dst: &TcpStream,
    c: CodecCtl<'_>,
    l: crate::proto::SealLayout,
) -> io::Result<Option<usize>> {
    let mut buf = env.bufs.take();
    let grant = env.bucket.grant_len(buf.len());
    let r = {
        let mut slots: Vec<io::IoSliceMut<'_>> = Vec::with_capacity(buf.len() / l.stride().max(1));
        let mut rest: &mut [u8] = &mut buf;
        let mut taken = 0usize;
        for (off, len) in l.slots(rest.len(), grant) {
            let Some((_, tail)) = std::mem::take(&mut rest).split_at_mut_checked(off - taken) else {
                break;
            };
            let Some((slot, after)) = tail.split_at_mut_checked(len) else {
                break;
            };
            slots.push(io::IoSliceMut::new(slot));
            rest = after;
            taken = off + len;
        }
        src.try_read_vectored(&mut slots)
    };
    let n = match r {
        Ok(0) => {
            env.bufs.put(buf);
            return Ok(None);
        }
        Ok(n) => n,
        Err(e) => {
            env.bufs.put(buf);
            return if e.kind() == io::ErrorKind::WouldBlock {
                Ok(Some(0))
            } else {
                Err(e)
            };
        }
    };
    act.touch();
    limit(env, n).await;
    env.meter.down(n as u64);
    let sealed = c
        .codec
        .borrow_mut()
        .seal_in_place(&mut buf, n, l)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
    let r = match sealed {
        Ok(len) => write_all(env, act, Dir::Down, dst, buf.get(..len).unwrap_or_default()).await,
        Err(e) => Err(e),
    };
    env.bufs.put(buf);
    r.map(|()| Some(n))
}

/// Bytes a codec-driven direction moves before it yields to the core's other tasks.
pub const YIELD_EVERY: usize = 1 << 20;

/// Bytes a direction copies before it switches to splice: short flows never pay for pipes
/// (whose per-uid budget is `fs.pipe-user-pages-soft`).
pub const SPLICE_AFTER: usize = 256 * 1024;

async fn copy_then_splice(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    src: &TcpStream,
    dst: &TcpStream,
) -> io::Result<()> {
    let mut copied = 0usize;
    while copied < SPLICE_AFTER {
        match copy_once(env, act, dir, src, dst).await? {
            Some(n) => copied += n,
            None => return Ok(()),
        }
    }
    splice_dir(env, act, dir, src, dst).await
}

/// One readiness-driven copy (no codec) of what is ready, up to a buffer. `None` at EOF (after
/// forwarding the FIN).
async fn copy_once(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    src: &TcpStream,
    dst: &TcpStream,
) -> io::Result<Option<usize>> {
    loop {
        read_ready(src).await?;
        let mut buf = env.bufs.take();
        let grant = env.bucket.grant_len(buf.len());
        let n = match src.try_read(buf.get_mut(..grant).unwrap_or_default()) {
            Ok(0) => {
                env.bufs.put(buf);
                finish_dir(env, act, dir, dst);
                return Ok(None);
            }
            Ok(n) => n,
            Err(e) => {
                env.bufs.put(buf);
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
        };
        act.touch();
        let mut no_carry = Vec::new();
        let r = Box::pin(forward(
            env,
            act,
            dir,
            dst,
            None,
            None,
            &mut no_carry,
            buf.get(..n).unwrap_or_default(),
        ))
        .await;
        env.bufs.put(buf);
        r?;
        return Ok(Some(n));
    }
}

async fn splice_dir(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    src: &TcpStream,
    dst: &TcpStream,
) -> io::Result<()> {
    let sfd = src.as_raw_fd();
    loop {
        read_ready(src).await?;
        let pipe = env.pipes.take()?;
        let grant = env.bucket.grant_len(pipe.capacity);
        let wfd = pipe.write.as_raw_fd();
        let n = match src.try_io(Interest::READABLE, || sys::splice(sfd, wfd, grant)) {
            Ok(0) => {
                env.pipes.put_empty(pipe);
                finish_dir(env, act, dir, dst);
                return Ok(());
            }
            Ok(n) => n,
            Err(e) => {
                env.pipes.put_empty(pipe);
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                return Err(e);
            }
        };
        act.touch();
        if dir == Dir::Down {
            env.meter.down(n as u64);
        }
        // A pipe that still holds bytes is dropped (closed) on error, never pooled.
        Box::pin(drain_pipe(env, act, dir, dst, pipe.read.as_raw_fd(), n)).await?;
        env.pipes.put_empty(pipe);
    }
}

/// Speed limit, then `n` bytes from the pipe `rfd` to `dst` (boxed by the caller, like
/// [`forward`]).
async fn drain_pipe(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    dst: &TcpStream,
    rfd: std::os::fd::RawFd,
    n: usize,
) -> io::Result<()> {
    limit(env, n).await;
    let dfd = dst.as_raw_fd();
    let mut left = n;
    while left > 0 {
        dst.writable().await?;
        match dst.try_io(Interest::WRITABLE, || sys::splice(rfd, dfd, left)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => {
                act.touch();
                left -= m.min(left);
                if dir == Dir::Up {
                    env.meter.up(m as u64);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Clears tokio's cached readiness after an operation done outside tokio (io_uring) reported
/// EAGAIN or a short read, so the next `readable()`/`writable()` really waits — but only while
/// the socket is still not ready *now*: bytes that arrived after the ring's operation completed
/// set readiness again through epoll before this task resumed, and clearing that blindly lost
/// the only wake-up for them (edge-triggered), stalling the connection.
fn clear_readiness(s: &TcpStream, interest: Interest) {
    let fd = s.as_raw_fd();
    let _ = s.try_io(interest, || {
        if interest.is_writable() {
            sys::poll_writable(fd)
        } else {
            sys::peek_readable(fd)
        }
    });
}

/// Plain copy over io_uring recv/send. A buffer is taken only once the source is readable
/// (idle connections hold none); it belongs to the ring while an operation is in flight.
async fn copy_dir_uring(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    src: &TcpStream,
    dst: &TcpStream,
) -> io::Result<()> {
    let Some(uring) = env.uring else {
        return Err(io::Error::other("uring copy without a ring"));
    };
    loop {
        read_ready(src).await?;
        if !Box::pin(uring_step(env, act, dir, src, dst, uring)).await? {
            return Ok(());
        }
    }
}

/// One received chunk over io_uring, forwarded; false at EOF (FIN forwarded). Boxed by the
/// caller so the ring futures are not part of an idle connection's state.
async fn uring_step(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    src: &TcpStream,
    dst: &TcpStream,
    uring: &std::rc::Rc<crate::runtime::uring::UringIo>,
) -> io::Result<bool> {
    let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
    let buf = env.bufs.take();
    let grant = env.bucket.grant_len(buf.len());
    let (r, buf) = uring.recv(sfd, buf, grant).await;
    let Some(buf) = buf else {
        return Err(r.err().unwrap_or_else(|| io::Error::other("ring lost a buffer")));
    };
    let n = match r {
        Ok(0) => {
            env.bufs.put(buf);
            finish_dir(env, act, dir, dst);
            return Ok(false);
        }
        Ok(n) => n,
        Err(e) => {
            env.bufs.put(buf);
            if e.kind() == io::ErrorKind::WouldBlock {
                clear_readiness(src, Interest::READABLE);
                return Ok(true);
            }
            return Err(e);
        }
    };
    if n < grant {
        clear_readiness(src, Interest::READABLE);
    }
    act.touch();
    if dir == Dir::Down {
        env.meter.down(n as u64);
    }
    limit(env, n).await;
    let mut off = 0;
    let mut buf = buf;
    while off < n {
        let (r, b) = uring.send(dfd, buf, off, n - off).await;
        let Some(b) = b else {
            return Err(r.err().unwrap_or_else(|| io::Error::other("ring lost a buffer")));
        };
        buf = b;
        match r {
            Ok(0) => {
                env.bufs.put(buf);
                return Err(io::ErrorKind::WriteZero.into());
            }
            Ok(m) => {
                act.touch();
                off += m;
                if dir == Dir::Up {
                    env.meter.up(m as u64);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                clear_readiness(dst, Interest::WRITABLE);
                if let Err(e) = dst.writable().await {
                    env.bufs.put(buf);
                    return Err(e);
                }
            }
            Err(e) => {
                env.bufs.put(buf);
                return Err(e);
            }
        }
    }
    env.bufs.put(buf);
    Ok(true)
}

#[cfg(test)]
mod tests;
