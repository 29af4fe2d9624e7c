//! Per-core pools of copy buffers and splice pipes. An idle connection holds neither: a buffer
//! is taken only when a read is ready and given back right after the write; a pipe goes back
//! only when it is empty (a pipe with bytes in it is closed instead).

use std::cell::RefCell;
use std::io;

use crate::sys::Pipe;

/// Copy buffer size. Measured on the dev box (docs/limits-on-this-machine.md): 64 KiB costs
/// ~1.0 CPU-s/GB, 256 KiB ~0.64; larger buys little more and costs memory per active conn.
pub const BUF_SIZE: usize = 256 * 1024;
/// Pipe capacity asked for with `F_SETPIPE_SZ` (64 KiB = default; the budget is per uid).
pub const PIPE_SIZE: usize = 256 * 1024;
const MAX_IDLE_BUFS: usize = 64;
const MAX_IDLE_PIPES: usize = 64;

pub struct BufPool {
    size: usize,
    free: RefCell<Vec<Box<[u8]>>>,
    vecs: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    pub fn new(size: usize) -> Self {
        BufPool {
            size,
            free: RefCell::new(Vec::new()),
            vecs: RefCell::new(Vec::new()),
        }
    }
    pub fn size(&self) -> usize {
        self.size
    }
    pub fn take(&self) -> Box<[u8]> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }
    pub fn put(&self, b: Box<[u8]>) {
        let mut f = self.free.borrow_mut();
        if f.len() < MAX_IDLE_BUFS && b.len() == self.size {
            f.push(b);
        }
    }
    /// An empty `Vec` with capacity for codec output.
    pub fn take_vec(&self) -> Vec<u8> {
        self.vecs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size + 4096))
    }
    pub fn put_vec(&self, mut v: Vec<u8>) {
        let mut f = self.vecs.borrow_mut();
        if f.len() < MAX_IDLE_BUFS && v.capacity() <= 4 * self.size {
            v.clear();
            f.push(v);
        }
    }
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

impl Default for BufPool {
    /// `BUF_SIZE`, or `V2SP_COPY_BUF_KB` (4..=4096) for measurements.
    fn default() -> Self {
        let kb = std::env::var("V2SP_COPY_BUF_KB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok());
        Self::new(kb.map_or(BUF_SIZE, |k| k.clamp(4, 4096) * 1024))
    }
}

pub struct PipePool {
    size: usize,
    free: RefCell<Vec<Pipe>>,
}

impl PipePool {
    pub fn new(size: usize) -> Self {
        PipePool {
            size,
            free: RefCell::new(Vec::new()),
        }
    }
    pub fn take(&self) -> io::Result<Pipe> {
        match self.free.borrow_mut().pop() {
            Some(p) => Ok(p),
            None => Pipe::new(self.size),
        }
    }
    /// Returns an **empty** pipe to the pool.
    pub fn put_empty(&self, p: Pipe) {
        let mut f = self.free.borrow_mut();
        if f.len() < MAX_IDLE_PIPES {
            f.push(p);
        }
    }
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

impl Default for PipePool {
    /// `PIPE_SIZE`, or `V2SP_PIPE_KB` (4..=1024, the default `pipe-max-size`) for measurements.
    fn default() -> Self {
        let kb = std::env::var("V2SP_PIPE_KB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok());
        Self::new(kb.map_or(PIPE_SIZE, |k| k.clamp(4, 1024) * 1024))
    }
}
