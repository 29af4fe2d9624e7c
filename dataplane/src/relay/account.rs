//! One user connection's accounting, the same object in every copy loop: the user's
//! speed-limit bucket, the meter that counts payload into the core's shared-memory bank, and
//! the connection's idle clock. Streams and datagrams differ only in how the limit applies.
//!
//! ```text
//! stream bytes:   pace(n) ── wait until n bytes fit the limit ──▶ send ──▶ count + touch
//! datagram bytes: fits(n) ── over the limit: dropped, costs nothing ──▶ send ──▶ count + touch
//! ```
//!
//! The order matters for exactness and fairness: bytes are counted only once sent (a failed
//! write counts nothing), and the limit is reserved before the send (a stalled destination
//! does not let a user run ahead of the limit afterwards).

use std::future::Future;

use super::{ConnCtl, Meter};
use crate::limits::gcra::Bucket;

/// See the module documentation. Borrowed from the connection for the length of a loop.
pub struct Account<'a> {
    pub meter: &'a dyn Meter,
    pub bucket: &'a Bucket,
    /// The connection's idle clock; `None` for a part of a connection that has none of its
    /// own (a mux sub-stream: its connection's clock is touched by the connection's loop).
    pub ctl: Option<&'a ConnCtl>,
}

impl Account<'_> {
    /// Waits until `n` bytes fit the user's speed limit (they are reserved now).
    pub async fn pace(&self, n: usize) {
        let d = self.bucket.reserve(n);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    /// Whether a datagram of `n` bytes fits the limit now (taken if it does; a datagram over
    /// the limit is dropped and costs nothing).
    pub fn fits(&self, n: usize) -> bool {
        self.bucket.try_take(n)
    }

    /// Client → destination stream bytes: paced, sent by `send`, then counted.
    pub async fn send_up<T, E>(&self, n: usize, send: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        self.pace(n).await;
        let r = send.await?;
        self.sent_up(n as u64);
        Ok(r)
    }

    /// Destination → client stream bytes: paced, sent by `send`, then counted.
    pub async fn send_down<T, E>(&self, n: usize, send: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        self.pace(n).await;
        let r = send.await?;
        self.sent_down(n as u64);
        Ok(r)
    }

    /// `n` payload bytes went client → destination.
    pub fn sent_up(&self, n: u64) {
        self.meter.up(n);
        if let Some(c) = self.ctl {
            c.touch();
        }
    }

    /// `n` payload bytes went destination → client.
    pub fn sent_down(&self, n: u64) {
        self.meter.down(n);
        if let Some(c) = self.ctl {
            c.touch();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Default)]
    struct Counted(Cell<[u64; 2]>);
    impl Meter for Counted {
        fn up(&self, n: u64) {
            let [u, d] = self.0.get();
            self.0.set([u + n, d]);
        }
        fn down(&self, n: u64) {
            let [u, d] = self.0.get();
            self.0.set([u, d + n]);
        }
    }

    /// Bytes are counted once sent, never when the send fails; datagrams over the limit are
    /// refused and cost nothing.
    #[tokio::test(flavor = "current_thread")]
    async fn counts_only_what_was_sent() {
        let meter = Counted::default();
        let bucket = Bucket::new(0);
        let a = Account {
            meter: &meter,
            bucket: &bucket,
            ctl: None,
        };
        a.send_up(100, async { Ok::<_, ()>(()) }).await.unwrap();
        assert!(a.send_down(50, async { Err::<(), _>("reset") }).await.is_err());
        a.send_down(7, async { Ok::<_, ()>(()) }).await.unwrap();
        assert_eq!(meter.0.get(), [100, 7]);
        let limited = Bucket::new(1000);
        let b = Account {
            meter: &meter,
            bucket: &limited,
            ctl: None,
        };
        // One second of burst, then over the limit.
        assert!(b.fits(1000));
        assert!(!b.fits(500));
    }
}
