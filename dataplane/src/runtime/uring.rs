//! The io_uring backend of a core: one ring per core whose fd is registered with tokio's
//! reactor (`AsyncFd`), so tokio timers, `tokio::net` and the epoll paths keep working on the
//! same thread. Used for accept and for recv/send on the plain copy path. Buffers and fds of an
//! in-flight operation belong to the ring's slab until the CQE arrives (`sys::uring::Ring`), so
//! dropping a future never frees memory the kernel may still write, and an fd accepted after a
//! cancel is closed.

use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use crate::sys::uring::{accepted_fd, RegisteredRing, Ring};

/// Per-core io_uring driver.
pub struct UringIo {
    reg: RegisteredRing,
}

impl UringIo {
    /// Creates the ring and spawns its reaper on the current `LocalSet`.
    pub fn start() -> io::Result<Rc<UringIo>> {
        let io = Rc::new(UringIo {
            reg: RegisteredRing::new(Ring::new(256)?)?,
        });
        // The reaper lives as long as the core's LocalSet (and keeps the ring alive that long).
        let reaper = io.clone();
        tokio::task::spawn_local(async move { while reaper.reg.wait_and_reap().await.is_ok() {} });
        Ok(io)
    }

    fn ring(&self) -> &Ring {
        self.reg.ring()
    }

    fn op(self: &Rc<Self>, idx: usize) -> Op {
        Op {
            io: self.clone(),
            idx,
            done: false,
        }
    }

    /// Accepts one connection on `listener` (a blocking-mode listening socket: the kernel arms
    /// its internal poll instead of returning EAGAIN).
    pub async fn accept(self: &Rc<Self>, listener: RawFd) -> io::Result<tokio::net::TcpStream> {
        let idx = self.ring().start_accept(listener)?;
        let (res, _) = self.op(idx).await;
        let fd = accepted_fd(res)?;
        let std = std::net::TcpStream::from(fd);
        std.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(std)
    }

    /// Like [`UringIo::accept`], but `stop` ends the wait without losing a connection: the
    /// pending accept is cancelled and awaited, and a connection the kernel handed over before
    /// the cancel took effect is returned (`Some`) for the caller to serve. `None`: stopped,
    /// nothing taken. Used when a successor takes over the listening socket (upgrade): every
    /// connection in the shared accept queue is served by exactly one of the two processes.
    pub async fn accept_until(
        self: &Rc<Self>,
        listener: RawFd,
        stop: impl Future<Output = ()>,
    ) -> Option<io::Result<tokio::net::TcpStream>> {
        let idx = match self.ring().start_accept(listener) {
            Ok(i) => i,
            Err(e) => return Some(Err(e)),
        };
        let mut op = self.op(idx);
        let done = tokio::select! {
            biased;
            (res, _) = &mut op => Some(res),
            () = stop => None,
        };
        let res = match done {
            Some(res) => res,
            None => {
                self.ring().cancel(idx);
                let (res, _) = op.await;
                if res < 0 {
                    return None;
                }
                res
            }
        };
        Some(accepted_fd(res).and_then(|fd| {
            let std = std::net::TcpStream::from(fd);
            std.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(std)
        }))
    }

    /// `recv` into `buf[..len]`; the buffer comes back in every case.
    pub async fn recv(
        self: &Rc<Self>,
        fd: RawFd,
        buf: Box<[u8]>,
        len: usize,
    ) -> (io::Result<usize>, Option<Box<[u8]>>) {
        let idx = match self.ring().start_recv(fd, buf, len) {
            Ok(i) => i,
            Err(e) => return (Err(e), None),
        };
        let (res, buf) = self.op(idx).await;
        (result(res), buf)
    }

    /// `send` of `buf[off..off+len]`; the buffer comes back in every case.
    pub async fn send(
        self: &Rc<Self>,
        fd: RawFd,
        buf: Box<[u8]>,
        off: usize,
        len: usize,
    ) -> (io::Result<usize>, Option<Box<[u8]>>) {
        let idx = match self.ring().start_send(fd, buf, off, len) {
            Ok(i) => i,
            Err(e) => return (Err(e), None),
        };
        let (res, buf) = self.op(idx).await;
        (result(res), buf)
    }

    pub fn in_flight(&self) -> usize {
        self.ring().in_flight()
    }
}

fn result(res: i32) -> io::Result<usize> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(usize::try_from(res).unwrap_or(0))
    }
}

struct Op {
    io: Rc<UringIo>,
    idx: usize,
    done: bool,
}

impl Future for Op {
    type Output = (i32, Option<Box<[u8]>>);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut r = self.io.ring().poll_op(self.idx, cx);
        if r.is_pending() {
            // Operations on ready sockets complete inside io_uring_enter: reap right away
            // instead of waiting for the reactor to report the ring fd.
            self.io.ring().reap();
            r = self.io.ring().poll_op(self.idx, cx);
        }
        if r.is_ready() {
            self.done = true;
        }
        r
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if !self.done {
            self.io.ring().orphan(self.idx);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    #[test]
    fn accept_recv_send_and_cancel_do_not_leak() {
        if crate::sys::uring::probe().is_err() {
            eprintln!("io_uring unavailable here; skipping");
            return;
        }
        crate::runtime::run_local(async {
            let io = UringIo::start().unwrap();
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let client = std::thread::spawn(move || {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                c.write_all(b"ping").unwrap();
                let mut b = [0u8; 4];
                c.read_exact(&mut b).unwrap();
                b
            });
            let s = io.accept(l.as_raw_fd()).await.unwrap();
            s.readable().await.unwrap();
            let (n, buf) = io.recv(s.as_raw_fd(), vec![0u8; 64].into_boxed_slice(), 64).await;
            let n = n.unwrap();
            let mut buf = buf.unwrap();
            assert_eq!(&buf[..n], b"ping");
            buf[..4].copy_from_slice(b"pong");
            let (m, _) = io.send(s.as_raw_fd(), buf, 0, 4).await;
            assert_eq!(m.unwrap(), 4);
            assert_eq!(&client.join().unwrap(), b"pong");
            // a pending accept dropped by a timeout is cancelled; nothing stays in flight
            let r = tokio::time::timeout(Duration::from_millis(50), io.accept(l.as_raw_fd())).await;
            assert!(r.is_err());
            for _ in 0..100 {
                if io.in_flight() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(io.in_flight(), 0);
        });
    }
}
