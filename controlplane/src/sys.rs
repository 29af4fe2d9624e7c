//! The control plane's only `unsafe`: blocking termination signals so one thread can wait for
//! them synchronously (no async runtime in this process).
#![allow(unsafe_code)]

/// Block SIGTERM, SIGINT and SIGHUP in the calling thread; threads spawned afterwards inherit
/// the mask, so only [`wait_signal`] receives them. Call first thing in `main`.
pub fn block_signals() {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; pthread_sigmask only changes
    // this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Makes `cmd`'s process start with no signal blocked. The mask [`block_signals`] sets is
/// inherited across fork and exec (the standard library does not reset it), and a program
/// started with SIGTERM blocked never sees `systemctl stop` or our own SIGTERM.
pub fn unblocked_signals(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe functions may be called: sigemptyset and sigprocmask are (POSIX
    // lists both); it touches no memory but its own stack and allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            if libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}

/// Wait for SIGTERM, SIGINT or SIGHUP; returns the signal number.
pub fn wait_signal() -> i32 {
    // SAFETY: as above; sigwait writes the received signal into `sig`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let mut sig: libc::c_int = 0;
        if libc::sigwait(&set, &mut sig) == 0 {
            sig
        } else {
            libc::SIGTERM
        }
    }
}

/// Send a signal to a child process.
pub fn signal_pid(pid: u32, sig: i32) {
    if pid == 0 || pid > i32::MAX as u32 {
        return;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// (total, used) bytes of the file system holding `path` (`df` semantics: used = blocks − free).
pub fn disk_usage(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path; statvfs only writes into `st`, which is
    // plain data.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        st
    };
    let frsize = st.f_frsize as u64;
    let total = (st.f_blocks as u64).saturating_mul(frsize);
    let free = (st.f_bfree as u64).saturating_mul(frsize);
    Some((total, total.saturating_sub(free)))
}

/// A process handle that cannot be confused with a later process given the same pid: the
/// supervisor signals and watches the data plane through it (a pid read from shared memory
/// may name anything by the time it is used).
pub struct PidFd {
    fd: std::os::fd::OwnedFd,
    pid: u32,
}

impl PidFd {
    /// `pidfd_open(pid)`.
    pub fn open(pid: u32) -> std::io::Result<PidFd> {
        use std::os::fd::FromRawFd;
        let Ok(p) = libc::pid_t::try_from(pid) else {
            return Err(std::io::ErrorKind::InvalidInput.into());
        };
        if p <= 0 {
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let Ok(fd) = i32::try_from(fd) else {
            return Err(std::io::Error::other(
                "pidfd_open returned an out-of-range descriptor",
            ));
        };
        // SAFETY: the kernel just created this descriptor for us; nobody else owns it.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(PidFd { fd, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `pidfd_send_signal`: reaches the process this handle was opened for, or nobody.
    pub fn signal(&self, sig: i32) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid pidfd, a signal number, no siginfo (NULL), no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the process has exited (a pidfd polls readable then).
    pub fn exited(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r != 0
    }
}
