//! Fixed-size memory-mapped files: the only place in `shared` with `unsafe`.
//!
//! A segment is a file in the shm directory mapped shared and read-write by both processes.
//! Everything placed in it is `#[repr(C)]`, made of fixed-width integers and atomics, and
//! every typed view is bounds- and alignment-checked here, so the rest of `shm` is safe code.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use memmap2::MmapRaw;

use super::layout::SegHeader;
use super::ShmError;

/// One mapped file.
pub(crate) struct Segment {
    map: MmapRaw,
    path: PathBuf,
}

// SAFETY: the mapping is plain shared memory; all concurrent access to it goes through atomics
// or follows the single-writer protocols documented in docs/design.md.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only hands out shared references to atomics or immutable data.
unsafe impl Sync for Segment {}

/// Refuses a shared-memory directory another user could write into or that is not ours:
/// whoever can replace a segment file there can feed both processes anything (users, config,
/// the pid the supervisor signals).
pub(crate) fn check_dir(dir: &Path) -> Result<(), ShmError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir).map_err(|e| ShmError::io(dir, e))?;
    let refuse = |what: String| {
        Err(ShmError::Invalid(format!(
            "{}: {what}; the shm directory must be owned by this user and writable by it only (mode 0700)",
            dir.display()
        )))
    };
    if !m.is_dir() {
        return refuse("not a directory (a symlink?)".into());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me {
        return refuse(format!("owned by uid {}, this process runs as {me}", m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return refuse(format!("mode {:o} lets others write into it", m.mode() & 0o7777));
    }
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700 for the last component, then checks it
/// ([`check_dir`]).
pub(crate) fn create_dir(dir: &Path) -> Result<(), ShmError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ShmError::io(parent, e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(ShmError::io(dir, e)),
        _ => {}
    }
    check_dir(dir)
}

impl Segment {
    /// Create (or replace) a segment of `size` bytes, zero-filled, with `header` at offset 0.
    /// The file is written under a temporary name and renamed into place, so a reader never
    /// maps a half-initialised header.
    pub(crate) fn create(path: &Path, size: usize, header: SegHeader) -> Result<Segment, ShmError> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let seg = Self::create_at(&tmp, size, header)?;
        std::fs::rename(&tmp, path).map_err(|e| ShmError::io(path, e))?;
        Ok(Segment {
            map: seg.map,
            path: path.to_path_buf(),
        })
    }

    /// Create the segment only if no file exists at `path` (an atomic hard link of a fully
    /// initialised temporary). Returns `Ok(None)` when another process won the race.
    pub(crate) fn create_exclusive(
        path: &Path,
        size: usize,
        header: SegHeader,
    ) -> Result<Option<Segment>, ShmError> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let seg = Self::create_at(&tmp, size, header)?;
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(Some(Segment {
                map: seg.map,
                path: path.to_path_buf(),
            })),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(ShmError::io(path, e)),
        }
    }

    fn create_at(path: &Path, size: usize, header: SegHeader) -> Result<Segment, ShmError> {
        // A leftover temporary (a crash between create and rename) is removed, never opened:
        // O_EXCL and O_NOFOLLOW make sure the file is a new one of ours, not something (a
        // symlink to another file) placed at that name.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(ShmError::io(path, e)),
            _ => {}
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| ShmError::io(path, e))?;
        // set_len leaves a sparse file: on tmpfs, pages are only allocated when touched.
        file.set_len(size as u64).map_err(|e| ShmError::io(path, e))?;
        let seg = Self::map_file(&file, path, size)?;
        // SAFETY: the mapping is at least `size` ≥ 64 bytes (checked in map_file), page-aligned,
        // and nobody else has it yet (temporary file).
        unsafe { std::ptr::write(seg.map.as_mut_ptr().cast::<SegHeader>(), header) };
        seg.map.flush().map_err(|e| ShmError::io(path, e))?;
        Ok(seg)
    }

    /// Map an existing segment and check its header.
    pub(crate) fn open(path: &Path, expect_kind: u32) -> Result<Segment, ShmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| ShmError::io(path, e))?;
        let len = file.metadata().map_err(|e| ShmError::io(path, e))?.len() as usize;
        let seg = Self::map_file(&file, path, len)?;
        seg.header().check(path, expect_kind, len)?;
        Ok(seg)
    }

    fn map_file(file: &File, path: &Path, len: usize) -> Result<Segment, ShmError> {
        if len < size_of::<SegHeader>() {
            return Err(ShmError::Layout {
                path: path.to_path_buf(),
                what: format!("file is only {len} bytes"),
            });
        }
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_raw(file)
            .map_err(|e| ShmError::io(path, e))?;
        Ok(Segment {
            map,
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn header(&self) -> &SegHeader {
        // SAFETY: map_file checked len ≥ size_of::<SegHeader>(); the mapping is page-aligned.
        // The header is written once before the file becomes visible and never changes.
        unsafe { &*self.map.as_ptr().cast::<SegHeader>() }
    }

    /// A shared reference to a `T` at byte offset `off`.
    ///
    /// `T` must be a `#[repr(C)]` type made only of integers, byte arrays and atomics, for
    /// which every bit pattern is valid (all layout types in `layout.rs`).
    pub(crate) fn at<T>(&self, off: usize) -> Result<&T, ShmError> {
        self.check(off, size_of::<T>(), align_of::<T>())?;
        // SAFETY: in bounds and aligned (checked); every bit pattern is a valid T (type
        // contract above); concurrent writers only go through T's atomics or follow the
        // single-writer protocols, so no `&` here aliases a non-atomic write.
        Ok(unsafe { &*self.map.as_ptr().add(off).cast::<T>() })
    }

    /// A shared slice of `n` `T`s at `off`; same contract as [`Segment::at`].
    pub(crate) fn slice<T>(&self, off: usize, n: usize) -> Result<&[T], ShmError> {
        let bytes = n
            .checked_mul(size_of::<T>())
            .ok_or_else(|| self.layout_err("slice overflow"))?;
        self.check(off, bytes, align_of::<T>())?;
        // SAFETY: as in `at`, for `n` consecutive elements.
        Ok(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off).cast::<T>(), n) })
    }

    /// Write `value` at `off`. Only for memory no other thread or process reads at the same
    /// time (the inactive side of an A/B table, a ring slot the consumer has not been shown).
    pub(crate) fn write<T>(&self, off: usize, value: T) -> Result<(), ShmError> {
        self.check(off, size_of::<T>(), align_of::<T>())?;
        // SAFETY: in bounds and aligned; exclusivity is the caller's protocol obligation
        // documented above, so this plain write races with no read.
        unsafe { std::ptr::write(self.map.as_mut_ptr().add(off).cast::<T>(), value) };
        Ok(())
    }

    /// Fill `n` `T`s at `off` in place through one exclusive slice (one bounds check for the
    /// whole region instead of one per element); same exclusivity contract as
    /// [`Segment::write`], and the same type contract as [`Segment::at`]. The slice cannot
    /// outlive the closure.
    pub(crate) fn fill_with<T, R>(
        &self,
        off: usize,
        n: usize,
        f: impl FnOnce(&mut [T]) -> R,
    ) -> Result<R, ShmError> {
        let bytes = n
            .checked_mul(size_of::<T>())
            .ok_or_else(|| self.layout_err("slice overflow"))?;
        self.check(off, bytes, align_of::<T>())?;
        // SAFETY: in bounds and aligned (checked); every bit pattern is a valid T (type
        // contract); no other thread or process reads or writes this region now (caller's
        // protocol obligation, as for `write`), and the `&mut` does not escape `f`.
        let s = unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(off).cast::<T>(), n) };
        Ok(f(s))
    }

    fn check(&self, off: usize, size: usize, align: usize) -> Result<(), ShmError> {
        let end = off
            .checked_add(size)
            .ok_or_else(|| self.layout_err("offset overflow"))?;
        if end > self.map.len() {
            return Err(self.layout_err(&format!(
                "access {off}..{end} beyond the {}-byte file",
                self.map.len()
            )));
        }
        if !(self.map.as_ptr() as usize + off).is_multiple_of(align) {
            return Err(self.layout_err(&format!("offset {off} not aligned to {align}")));
        }
        Ok(())
    }

    fn layout_err(&self, what: &str) -> ShmError {
        ShmError::Layout {
            path: self.path.clone(),
            what: what.to_string(),
        }
    }
}

/// Hint the CPU to fetch the cache line holding `v` (used to overlap the random index
/// probes of a table build). A no-op where the architecture has no prefetch hint.
#[inline(always)]
pub(crate) fn prefetch<T>(v: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and has no architectural effect,
    // and the pointer comes from a valid reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((v as *const T).cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Nanoseconds on `CLOCK_MONOTONIC`: one clock for every process on the machine (speed-limit
/// clocks in the `rates` file are shared by the data planes of an upgrade). 0 if it fails,
/// which Linux documents only for an invalid clock id or pointer.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call and
    // CLOCK_MONOTONIC is a valid clock id; the kernel (vDSO) writes only that struct.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if r != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Whether a process with this pid exists (a dead owner's segments may be taken over).
pub(crate) fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks existence and permission.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The loom models' stand-in for the plain (non-atomic) table writes of [`Segment::write`] and
/// the cores' plain reads of records: a loom `UnsafeCell` per table side, so that loom reports
/// any write that is not ordered after every read of the same side (and vice versa).
#[cfg(all(test, loom))]
pub(crate) mod loom_cell {
    pub(crate) use loom::cell::UnsafeCell;

    pub(crate) fn write(cell: &UnsafeCell<u64>, v: u64) {
        // SAFETY: loom checks the exclusivity this asserts (it panics on a causally
        // concurrent access), which is exactly what the models test.
        cell.with_mut(|p| unsafe { *p = v });
    }

    pub(crate) fn read(cell: &UnsafeCell<u64>) -> u64 {
        // SAFETY: as in `write`: loom reports a read concurrent with a write.
        cell.with(|p| unsafe { *p })
    }
}
