//! The only `unsafe` in the data plane: thin, checked wrappers over syscalls that std/tokio/
//! socket2 do not expose (CPU affinity mask, pipes with `F_SETPIPE_SZ`, non-blocking
//! `splice(2)`, resource usage, the THP opt-out, descriptors inherited on upgrade). Every block carries its `// SAFETY:` argument.
#![allow(unsafe_code)]

pub mod uring;

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// CPUs this thread may run on (`sched_getaffinity`), so cgroup cpusets and `taskset` are
/// respected. Falls back to `0..available_parallelism` if the call fails.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is a plain bit array; all-zero is a valid (empty) value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: we pass the size of the set we own and a valid pointer to it; pid 0 = this thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        return (0..n).collect();
    }
    let max = 8 * size_of::<libc::cpu_set_t>();
    (0..max)
        // SAFETY: `cpu` < CPU_SETSIZE, the set was filled by the kernel.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// A non-blocking pipe pair used as the in-kernel buffer for splice.
#[derive(Debug)]
pub struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
    /// Capacity the kernel granted (bytes).
    pub capacity: usize,
}

impl Pipe {
    /// Creates an `O_NONBLOCK|O_CLOEXEC` pipe and asks for `size` bytes of capacity. When the
    /// per-user pipe budget is exhausted the kernel may grant less; `capacity` says what we got.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, both fds are fresh and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let want = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ/F_GETPIPE_SZ on a pipe fd we own; no pointers involved.
        let got = unsafe {
            let r = libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, want);
            if r > 0 {
                r
            } else {
                libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
            }
        };
        let capacity = usize::try_from(got).unwrap_or(4096).max(4096);
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }
}

/// One non-blocking `splice(2)` of at most `len` bytes from `from` to `to` (one of them must be
/// a pipe). `Ok(0)` means end of file on `from`. `WouldBlock` is returned as an error so that
/// tokio's `try_io` clears readiness.
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets mean "use and advance the file position" (required for sockets and
    // pipes); the fds are borrowed from live owners for the duration of the call.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// Whether a socket has bytes (or its EOF) to read, without taking any: `Ok(())` if so,
/// `WouldBlock` if not. Used inside tokio's `try_io` to clear read readiness only while the
/// socket really has nothing, after an operation done outside tokio (io_uring) came back short.
pub fn peek_readable(fd: RawFd) -> io::Result<()> {
    let mut b = 0u8;
    // SAFETY: one writable byte on our stack, borrowed for the call; the fd is borrowed from a
    // live owner for the duration of the call.
    let n = unsafe {
        libc::recv(
            fd,
            std::ptr::addr_of_mut!(b).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether a socket can take bytes now: `Ok(())` if so, `WouldBlock` if not (the write-side
/// counterpart of [`peek_readable`]).
pub fn poll_writable(fd: RawFd) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one pollfd on our stack, borrowed for the call; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if p.revents & (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) != 0 {
        Ok(())
    } else {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// Takes ownership of descriptor `fd`, inherited from the parent process (upgrade hand-over),
/// and marks it close-on-exec. `None` if no such descriptor is open.
///
/// Callers pass each number once and only numbers ≥ 3 listed by the parent, before this
/// process opens any file of its own (first thing in `main`).
pub fn adopt_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    if fd < 3 {
        return None;
    }
    // SAFETY: fcntl with integer arguments only; a closed number returns -1 (EBADF).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return None;
    }
    // SAFETY: as above; sets a flag on a descriptor we just saw open.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: the descriptor is open (checked above) and was inherited across exec: this
    // process has not opened anything that could hold the same number (the caller runs before
    // any file is opened and passes each number once), so this becomes its only owner.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets or clears close-on-exec on a descriptor we own (cleared only on duplicates made for a
/// successor process, just before it is spawned, and closed right after).
pub fn set_cloexec(fd: std::os::fd::BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl with integer arguments on a descriptor borrowed from a live owner.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFD, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unblocks the signals this process acts on (SIGTERM, SIGINT, SIGHUP, SIGUSR2) in the
/// calling thread; threads it spawns afterwards inherit that. A blocked mask survives `exec`:
/// a data plane started by a parent that blocks them (the control plane waits for its own
/// signals with `sigwait`) would otherwise never see SIGTERM and be killed at the end of the
/// stop timeout instead of draining. Call first thing in `main`, before any thread starts.
pub fn unblock_signals() -> io::Result<()> {
    // SAFETY: `set` is a sigset_t initialised by sigemptyset before use; pthread_sigmask reads
    // it and changes only the calling thread's mask (no old mask is written back: null).
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Opts this process out of transparent huge pages (`PR_SET_THP_DISABLE`). The allocator
/// madvises its arenas for huge pages; the kernel then backs the heap in 2 MiB steps, so a
/// few hundred idle connections more or less move RSS by whole huge pages and the per-
/// connection cost (a few KiB of task state) becomes unmeasurable, and unbounded by the
/// connection count. A proxy's heap is small and touched sparsely; huge pages buy nothing.
pub fn disable_transparent_huge_pages() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed to the kernel.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// CPU seconds (user + system) consumed by this process so far (measurement helper).
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: `rusage` is plain data; zeroed is valid and the kernel fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to our own struct.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn affinity_is_not_empty() {
        assert!(!allowed_cpus().is_empty());
    }

    #[test]
    fn pipe_splice_roundtrip_through_pipe() {
        let a = Pipe::new(65536).unwrap();
        let b = Pipe::new(65536).unwrap();
        assert!(a.capacity >= 4096);
        let msg = b"hello splice";
        let w = std::fs::File::from(a.write.try_clone().unwrap());
        use std::io::Write;
        (&w).write_all(msg).unwrap();
        let n = splice(a.read.as_raw_fd(), b.write.as_raw_fd(), 1024).unwrap();
        assert_eq!(n, msg.len());
        let e = splice(a.read.as_raw_fd(), b.write.as_raw_fd(), 1024).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }
}
