//! The atomics every shm protocol goes through: std's in normal builds, loom's when the
//! protocols are model-checked (`RUSTFLAGS="--cfg loom"`, see `loom_models.rs`).
//!
//! Under loom the layout structs are built on the heap by the models (loom atomics are
//! larger than std's, so the `const` size asserts in `layout.rs` are compiled out there and
//! nothing is ever mapped from a file).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64};
