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
//! * Half-close: EOF in one direction becomes `shutdown(Write)` on the other socket while the
//!   other direction continues, under the shorter uplink-only/downlink-only idle timeout.

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
use crate::proto::StreamCodec;
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

/// Cancellation handle of one connection (held by the core's registry).
#[derive(Default)]
pub struct ConnCtl {
    cancelled: Cell<bool>,
    notify: tokio::sync::Notify,
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

struct Activity {
    last: Cell<Instant>,
    idle: Cell<Duration>,
    /// Wakes the watchdog when the idle timeout shrinks (half-close).
    changed: tokio::sync::Notify,
}

impl Activity {
    fn touch(&self) {
        self.last.set(Instant::now());
    }
    /// Switches to a half-closed idle timeout (never lengthens it).
    fn half_closed(&self, t: Duration) {
        self.touch();
        if t < self.idle.get() {
            self.idle.set(t);
            self.changed.notify_one();
        }
    }
    async fn expired(&self) {
        loop {
            let deadline = self.last.get() + self.idle.get();
            if Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.changed.notified() => {}
            }
        }
    }
}

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
    let act = Activity {
        last: Cell::new(Instant::now()),
        idle: Cell::new(env.timeouts.idle),
        changed: tokio::sync::Notify::new(),
    };
    let codec = codec.map(RefCell::new);
    let both = async {
        match &codec {
            Some(c) => {
                tokio::try_join!(
                    copy_dir(env, &act, Dir::Up, client, dest, Some(c), pending_up),
                    copy_dir(env, &act, Dir::Down, dest, client, Some(c), Vec::new()),
                )
            }
            None if env.splice && pending_up.is_empty() => {
                tokio::try_join!(
                    copy_then_splice(env, &act, Dir::Up, client, dest),
                    copy_then_splice(env, &act, Dir::Down, dest, client),
                )
            }
            None if env.uring.is_some() && pending_up.is_empty() => {
                tokio::try_join!(
                    copy_dir_uring(env, &act, Dir::Up, client, dest),
                    copy_dir_uring(env, &act, Dir::Down, dest, client),
                )
            }
            None => {
                tokio::try_join!(
                    copy_dir(env, &act, Dir::Up, client, dest, None, pending_up),
                    copy_dir(env, &act, Dir::Down, dest, client, None, Vec::new()),
                )
            }
        }
    };
    tokio::select! {
        r = both => match r { Ok(_) => RelayEnd::Done, Err(e) => RelayEnd::Error(e) },
        _ = act.expired() => RelayEnd::IdleTimeout,
        _ = env.ctl.cancelled() => RelayEnd::Cancelled,
    }
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
    mut data: &[u8],
) -> io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => {
                act.touch();
                if dir == Dir::Up {
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
    let d = env.bucket.reserve(n);
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

async fn copy_dir(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    src: &TcpStream,
    dst: &TcpStream,
    codec: Option<&RefCell<Box<dyn StreamCodec>>>,
    pending: Vec<u8>,
) -> io::Result<()> {
    // Partial frame carried between reads (client wire bytes, Up with a codec only).
    let mut carry: Vec<u8> = Vec::new();
    if !pending.is_empty() {
        limit(env, pending.len()).await;
        process_chunk(env, act, dir, dst, codec, &mut carry, &pending).await?;
    }
    loop {
        src.readable().await?;
        let mut buf = env.bufs.take();
        let grant = env.bucket.grant_len(buf.len());
        let n = match src.try_read(buf.get_mut(..grant).unwrap_or_default()) {
            Ok(0) => {
                env.bufs.put(buf);
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
        limit(env, n).await;
        let r = process_chunk(
            env,
            act,
            dir,
            dst,
            codec,
            &mut carry,
            buf.get(..n).unwrap_or_default(),
        )
        .await;
        env.bufs.put(buf);
        r?;
        // A codec that went transparent (Vision's direct mode) hands this direction to splice.
        if env.splice && carry.is_empty() && codec.is_some_and(|c| c.borrow().passthrough(dir == Dir::Up)) {
            return splice_dir(env, act, dir, src, dst).await;
        }
    }
}

async fn process_chunk(
    env: &RelayEnv<'_>,
    act: &Activity,
    dir: Dir,
    dst: &TcpStream,
    codec: Option<&RefCell<Box<dyn StreamCodec>>>,
    carry: &mut Vec<u8>,
    data: &[u8],
) -> io::Result<()> {
    let Some(codec) = codec else {
        if dir == Dir::Down {
            env.meter.down(data.len() as u64);
        }
        return write_all(env, act, dir, dst, data).await;
    };
    let mut out = env.bufs.take_vec();
    let res = match dir {
        Dir::Up => {
            let input: &[u8] = if carry.is_empty() {
                data
            } else {
                carry.extend_from_slice(data);
                &carry[..]
            };
            match codec.borrow_mut().open(input, &mut out) {
                Ok(used) => {
                    let rest = input.get(used..).unwrap_or_default().to_vec();
                    *carry = rest;
                    Ok(())
                }
                Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
        Dir::Down => {
            env.meter.down(data.len() as u64);
            codec
                .borrow_mut()
                .seal(data, &mut out)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        }
    };
    let r = match res {
        Ok(()) => write_all(env, act, dir, dst, &out).await,
        Err(e) => Err(e),
    };
    env.bufs.put_vec(out);
    r
}

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
        src.readable().await?;
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
        limit(env, n).await;
        let mut no_carry = Vec::new();
        let r = process_chunk(
            env,
            act,
            dir,
            dst,
            None,
            &mut no_carry,
            buf.get(..n).unwrap_or_default(),
        )
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
    let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
    loop {
        src.readable().await?;
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
        limit(env, n).await;
        let rfd = pipe.read.as_raw_fd();
        let mut left = n;
        while left > 0 {
            // A pipe that still holds bytes is dropped (closed) on error, never pooled.
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
        env.pipes.put_empty(pipe);
    }
}

/// Clears tokio's cached readiness after an operation done outside tokio (io_uring) reported
/// EAGAIN or a short read, so the next `readable()`/`writable()` really waits.
fn clear_readiness(s: &TcpStream, interest: Interest) {
    let _ = s.try_io(interest, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
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
    let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
    loop {
        src.readable().await?;
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
                return Ok(());
            }
            Ok(n) => n,
            Err(e) => {
                env.bufs.put(buf);
                if e.kind() == io::ErrorKind::WouldBlock {
                    clear_readiness(src, Interest::READABLE);
                    continue;
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
    }
}
