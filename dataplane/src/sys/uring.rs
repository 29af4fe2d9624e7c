//! io_uring availability probe (the backend decision is in `runtime::backend`).
//!
//! The uring backend needs the kernel ≥ 6.1 feature set: `SINGLE_ISSUER|DEFER_TASKRUN` at setup
//! and the opcodes the driver uses (accept, recv, send, send-zc, poll-add, connect, close,
//! sendmsg-zc — the last one is 6.1+). Anything else (ENOSYS, EPERM from seccomp,
//! `kernel.io_uring_disabled`, memlock) means epoll.

use io_uring::{opcode, IoUring, Probe};

/// Why io_uring is not usable, in words for the startup log.
pub fn probe() -> Result<(), String> {
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        match s.trim() {
            "0" | "" => {}
            // 1 = only processes in `io_uring_group` (or CAP_SYS_ADMIN) may create rings; the
            // setup below tells us whether we are one of them.
            "1" => {}
            other => return Err(format!("kernel.io_uring_disabled = {other}")),
        }
    }
    let ring: IoUring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .build(8)
        .map_err(|e| format!("io_uring_setup with SINGLE_ISSUER|DEFER_TASKRUN failed: {e}"))?;
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    let needed = [
        ("accept", opcode::Accept::CODE),
        ("recv", opcode::Recv::CODE),
        ("send", opcode::Send::CODE),
        ("send_zc", opcode::SendZc::CODE),
        ("sendmsg_zc", opcode::SendMsgZc::CODE),
        ("poll_add", opcode::PollAdd::CODE),
        ("connect", opcode::Connect::CODE),
        ("close", opcode::Close::CODE),
        ("async_cancel", opcode::AsyncCancel::CODE),
    ];
    for (name, code) in needed {
        if !p.is_supported(code) {
            return Err(format!("io_uring opcode {name} not supported"));
        }
    }
    Ok(())
}

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll, Waker};

use io_uring::types::Fd;

/// `user_data` of cancel requests (their CQEs are ignored).
const CANCEL_TAG: u64 = u64::MAX;

/// What an in-flight operation owns until its CQE arrives.
enum Owned {
    None,
    Buf(Box<[u8]>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Accept,
    Io,
}

enum State {
    Pending(Option<Waker>),
    Done(i32),
    /// The future was dropped before completion: the slot (and its buffer) stay owned here
    /// until the CQE arrives; an accepted fd arriving then is closed.
    Orphaned,
}

struct Slot {
    state: State,
    owned: Owned,
    kind: Kind,
}

/// A per-core io_uring with a slab of in-flight operations. Single-threaded (core thread);
/// the reaper (see `runtime::uring`) calls [`Ring::reap`] when the ring fd is readable.
pub struct Ring {
    ring: RefCell<IoUring>,
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
    /// Tests: how many of the next `io_uring_enter` calls fail with EBUSY.
    #[cfg(test)]
    fail_submits: std::cell::Cell<u32>,
}

impl Ring {
    pub fn new(entries: u32) -> io::Result<Ring> {
        // No DEFER_TASKRUN here: completions must be posted without our own io_uring_enter so
        // that the ring fd's readiness (polled by tokio) reflects them.
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .setup_single_issuer()
            .build(entries)?;
        Ok(Ring {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            #[cfg(test)]
            fail_submits: std::cell::Cell::new(0),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.ring.borrow().as_raw_fd()
    }

    fn alloc(&self, slot: Slot) -> usize {
        let mut slots = self.slots.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(i) => {
                if let Some(s) = slots.get_mut(i) {
                    *s = Some(slot);
                }
                i
            }
            None => {
                slots.push(Some(slot));
                slots.len() - 1
            }
        }
    }

    fn release(&self, idx: usize) -> Option<Slot> {
        let s = self.slots.borrow_mut().get_mut(idx)?.take();
        if s.is_some() {
            self.free.borrow_mut().push(idx);
        }
        s
    }

    fn submit(&self, ring: &mut IoUring) -> io::Result<usize> {
        #[cfg(test)]
        if self.fail_submits.get() > 0 {
            self.fail_submits.set(self.fail_submits.get() - 1);
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        ring.submit()
    }

    /// Queues `e` and submits. `Err` only when `e` never reached the submission queue (its
    /// memory is still the caller's). Once queued, the kernel takes the entry at the next
    /// `io_uring_enter` even when this one fails (EINTR, EAGAIN, EBUSY leave queued entries
    /// in place), so the operation is in flight from then on and its slot and buffer stay the
    /// ring's until its CQE; a failed submit is retried by the next push or reap.
    fn push(&self, e: io_uring::squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: every pointer in `e` refers to memory owned by a slab slot (a boxed buffer
        // whose heap allocation does not move) or to a descriptor the caller keeps open until
        // the CQE; slots are only released after the CQE arrived (never on a submit error once
        // the entry is queued), so the kernel never sees freed memory even when the awaiting
        // future is dropped.
        let pushed = unsafe { ring.submission().push(&e) };
        if pushed.is_err() {
            // The queue is full of entries a failed submit left: nothing of `e` is queued yet.
            self.submit(&mut ring)?;
            // SAFETY: as above.
            unsafe { ring.submission().push(&e) }.map_err(|_| io::Error::other("submission queue full"))?;
        }
        if let Err(err) = self.submit(&mut ring) {
            tracing::debug!("io_uring submit failed ({err}); the queued entry goes with the next submit");
        }
        Ok(())
    }

    fn start(
        &self,
        kind: Kind,
        owned: Owned,
        build: impl FnOnce(*mut u8, u32) -> io_uring::squeue::Entry,
    ) -> io::Result<usize> {
        let idx = self.alloc(Slot {
            state: State::Pending(None),
            owned,
            kind,
        });
        let (ptr, len) = {
            let mut slots = self.slots.borrow_mut();
            match slots.get_mut(idx).and_then(Option::as_mut).map(|s| &mut s.owned) {
                Some(Owned::Buf(b)) => (b.as_mut_ptr(), u32::try_from(b.len()).unwrap_or(u32::MAX)),
                _ => (std::ptr::null_mut(), 0),
            }
        };
        let e = build(ptr, len).user_data(idx as u64);
        if let Err(err) = self.push(e) {
            self.release(idx);
            return Err(err);
        }
        Ok(idx)
    }

    /// Starts a `recv` of up to `len` bytes into `buf` (owned by the ring until completion).
    pub fn start_recv(&self, fd: RawFd, buf: Box<[u8]>, len: usize) -> io::Result<usize> {
        self.start(Kind::Io, Owned::Buf(buf), |p, l| {
            opcode::Recv::new(Fd(fd), p, l.min(u32::try_from(len).unwrap_or(u32::MAX))).build()
        })
    }

    /// Starts a `send` of `buf[off..off+len]`.
    pub fn start_send(&self, fd: RawFd, buf: Box<[u8]>, off: usize, len: usize) -> io::Result<usize> {
        let end = off.saturating_add(len);
        if end > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "send range outside buffer",
            ));
        }
        self.start(Kind::Io, Owned::Buf(buf), |p, _| {
            // SAFETY: off + len ≤ buf.len() was checked above, so the pointer stays in bounds.
            let p = unsafe { p.add(off) };
            opcode::Send::new(Fd(fd), p, u32::try_from(len).unwrap_or(u32::MAX))
                .flags(libc::MSG_NOSIGNAL)
                .build()
        })
    }

    /// Starts a single-shot `accept4(SOCK_NONBLOCK|SOCK_CLOEXEC)`.
    pub fn start_accept(&self, fd: RawFd) -> io::Result<usize> {
        self.start(Kind::Accept, Owned::None, |_, _| {
            opcode::Accept::new(Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
        })
    }

    /// Polls operation `idx`: on completion returns the result (≥ 0 or -errno) and the buffer.
    pub fn poll_op(&self, idx: usize, cx: &mut Context<'_>) -> Poll<(i32, Option<Box<[u8]>>)> {
        {
            let mut slots = self.slots.borrow_mut();
            let Some(Some(s)) = slots.get_mut(idx) else {
                return Poll::Ready((-libc::ECANCELED, None));
            };
            match &mut s.state {
                State::Pending(w) => {
                    *w = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                State::Done(_) => {}
                State::Orphaned => return Poll::Ready((-libc::ECANCELED, None)),
            }
        }
        match self.release(idx) {
            Some(Slot {
                state: State::Done(res),
                owned,
                ..
            }) => {
                let buf = match owned {
                    Owned::Buf(b) => Some(b),
                    Owned::None => None,
                };
                Poll::Ready((res, buf))
            }
            _ => Poll::Ready((-libc::ECANCELED, None)),
        }
    }

    /// The awaiting future was dropped. A completed op is cleaned up now (closing an accepted
    /// fd); a pending one is cancelled and cleaned up when its CQE arrives.
    pub fn orphan(&self, idx: usize) {
        let done = {
            let mut slots = self.slots.borrow_mut();
            let Some(Some(s)) = slots.get_mut(idx) else { return };
            match s.state {
                State::Pending(_) => {
                    s.state = State::Orphaned;
                    false
                }
                _ => true,
            }
        };
        if done {
            if let Some(s) = self.release(idx) {
                Self::cleanup(s);
            }
        } else {
            let e = opcode::AsyncCancel::new(idx as u64).build().user_data(CANCEL_TAG);
            let _ = self.push(e);
        }
    }

    /// Asks the kernel to cancel operation `idx` while its future keeps waiting: the future
    /// then completes with `-ECANCELED`, or with the result the operation reached first (an
    /// accept that already took a connection hands it over instead of losing it).
    pub fn cancel(&self, idx: usize) {
        let pending = matches!(
            self.slots.borrow().get(idx),
            Some(Some(Slot {
                state: State::Pending(_),
                ..
            }))
        );
        if pending {
            let e = opcode::AsyncCancel::new(idx as u64).build().user_data(CANCEL_TAG);
            let _ = self.push(e);
        }
    }

    fn cleanup(s: Slot) {
        if let (Kind::Accept, State::Done(fd)) = (s.kind, &s.state) {
            if *fd >= 0 {
                // SAFETY: the kernel handed us this new descriptor and nobody else has seen it.
                drop(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }

    /// Drains the completion queue, waking waiters. Returns how many CQEs were seen.
    pub fn reap(&self) -> usize {
        let mut done: Vec<(u64, i32)> = Vec::new();
        {
            let mut ring = self.ring.borrow_mut();
            // Entries a failed submit left queued.
            if !ring.submission().is_empty() {
                let _ = self.submit(&mut ring);
            }
            for cqe in ring.completion() {
                done.push((cqe.user_data(), cqe.result()));
            }
        }
        for (ud, res) in &done {
            if *ud == CANCEL_TAG {
                continue;
            }
            let idx = usize::try_from(*ud).unwrap_or(usize::MAX);
            let mut orphan = false;
            let mut waker = None;
            {
                let mut slots = self.slots.borrow_mut();
                if let Some(Some(s)) = slots.get_mut(idx) {
                    match std::mem::replace(&mut s.state, State::Done(*res)) {
                        State::Pending(w) => waker = w,
                        State::Orphaned => orphan = true,
                        State::Done(_) => {}
                    }
                }
            }
            if orphan {
                if let Some(s) = self.release(idx) {
                    Self::cleanup(s);
                }
            }
            if let Some(w) = waker {
                w.wake();
            }
        }
        done.len()
    }

    /// In-flight operations (tests: nothing may leak).
    pub fn in_flight(&self) -> usize {
        self.slots.borrow().iter().filter(|s| s.is_some()).count()
    }
}

/// Turns an accept result into an owned descriptor.
pub fn accepted_fd(res: i32) -> io::Result<OwnedFd> {
    if res < 0 {
        return Err(io::Error::from_raw_os_error(-res));
    }
    // SAFETY: a non-negative accept result is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(res) })
}

/// The ring fd as tokio sees it.
pub struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A ring together with its registration in tokio's reactor. Field order matters: the
/// registration is dropped (deregistered) before the ring closes its fd.
pub struct RegisteredRing {
    afd: tokio::io::unix::AsyncFd<RingFd>,
    ring: Ring,
}

impl RegisteredRing {
    /// Must be called inside a tokio runtime.
    pub fn new(ring: Ring) -> io::Result<RegisteredRing> {
        let fd = RingFd(ring.fd());
        // SAFETY: the fd belongs to `ring`, which lives in the same struct and is dropped
        // after `afd` (declaration order), so the registered fd is open for the registration's
        // whole lifetime and is never replaced underneath it.
        let afd =
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)? };
        Ok(RegisteredRing { afd, ring })
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Waits until the ring fd reports completions, clears readiness and reaps them.
    pub async fn wait_and_reap(&self) -> io::Result<usize> {
        let mut g = self.afd.readable().await?;
        g.clear_ready();
        Ok(self.ring.reap())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::io::Write;

    /// A submit that fails after the entry was queued must not free the buffer the kernel
    /// will still write into: the op stays in flight and completes into its own buffer.
    #[test]
    fn failed_submit_keeps_the_queued_recv_in_flight() {
        let Ok(ring) = Ring::new(8) else {
            eprintln!("io_uring unavailable here: skipped");
            return;
        };
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        ring.fail_submits.set(1);
        let idx = ring
            .start_recv(b.as_raw_fd(), vec![0u8; 64].into_boxed_slice(), 64)
            .expect("a queued entry is in flight even when the submit failed");
        assert_eq!(ring.in_flight(), 1, "the slot and its buffer stay the ring's");
        a.write_all(b"still mine").unwrap();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..500 {
            ring.reap();
            if let Poll::Ready((res, buf)) = ring.poll_op(idx, &mut cx) {
                assert_eq!(res, 10);
                assert_eq!(buf.as_deref().and_then(|b| b.get(..10)), Some(&b"still mine"[..]));
                assert_eq!(ring.in_flight(), 0);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the recv never completed");
    }
}
