//! Per-user speed limit shared by all of a user's connections on all cores (GCRA).
//!
//! One [`Bucket`] per (node, user): an `AtomicU64` theoretical arrival time (TAT, ns on
//! `CLOCK_MONOTONIC`) and the current rate. The TAT lives in the shm directory's `rates` file
//! when the data plane has one (every data-plane process of an upgrade then draws on the same
//! clock: `v2sp_shared::shm::RateTable`), else in the bucket. Every read/splice *reserves* its bytes
//! with one CAS and gets back how long to wait before going on; upload and download draw from the
//! same bucket. Burst tolerance is 1 s worth of bytes (the token bucket of the reference
//! implementation: capacity = one second's quantum). The rate lives in the bucket, so a limit
//! change (new table generation) applies to connections that are already open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use v2sp_shared::shm::{RateTable, SharedClock};

const NS: u128 = 1_000_000_000;
/// Burst tolerance: one second of traffic at the configured rate.
const TAU_NS: u64 = 1_000_000_000;

/// Bytes per second for the effective limit: min of the non-zero Mbps values; 0 = unlimited.
pub fn effective_bytes_per_sec(node_mbps: u32, user_mbps: u32) -> u64 {
    let m = match (node_mbps, user_mbps) {
        (0, u) => u,
        (n, 0) => n,
        (n, u) => n.min(u),
    };
    u64::from(m) * 1_000_000 / 8
}

/// Nanoseconds on `CLOCK_MONOTONIC`, the clock every data-plane process's buckets use.
pub fn now_ns() -> u64 {
    v2sp_shared::shm::monotonic_ns()
}

/// One user's shared budget.
#[derive(Debug, Default)]
pub struct Bucket {
    /// The clock when there is no shared one, or the shared slot went to another user.
    tat: AtomicU64,
    shared: Option<SharedClock>,
    rate: AtomicU64,
}

impl Bucket {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self::with_clock(bytes_per_sec, None)
    }

    /// A bucket on `shared`'s clock (one all data-plane processes use), or its own.
    pub fn with_clock(bytes_per_sec: u64, shared: Option<SharedClock>) -> Self {
        Bucket {
            tat: AtomicU64::new(0),
            shared,
            rate: AtomicU64::new(bytes_per_sec),
        }
    }

    /// Whether the clock is the shared one (false: this process's own).
    pub fn is_shared(&self) -> bool {
        self.shared.as_ref().is_some_and(|c| c.tat().is_some())
    }

    #[inline]
    fn clock(&self) -> &AtomicU64 {
        self.shared
            .as_ref()
            .and_then(SharedClock::tat)
            .unwrap_or(&self.tat)
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// How many bytes one read should ask for: about 1/20 s of budget (so a reservation never
    /// stalls a connection for long), at least 4 KiB, at most `max`.
    pub fn grant_len(&self, max: usize) -> usize {
        match self.rate() {
            0 => max,
            r => usize::try_from(r / 20).unwrap_or(max).clamp(4096.min(max), max),
        }
    }

    /// Reserves `n` bytes at time `now` (ns); returns how long the caller must wait (ns) before
    /// using them. Unlimited buckets return 0 without touching the TAT.
    pub fn reserve_at(&self, n: u64, now: u64) -> u64 {
        let rate = self.rate();
        if rate == 0 || n == 0 {
            return 0;
        }
        let cost = u64::try_from(u128::from(n) * NS / u128::from(rate)).unwrap_or(u64::MAX);
        let tat = self.clock();
        let mut cur = tat.load(Ordering::Relaxed);
        loop {
            let new = cur.max(now).saturating_add(cost);
            match tat.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return new.saturating_sub(now.saturating_add(TAU_NS)),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Takes `n` bytes only if that stays within the burst tolerance (UDP policing: a datagram
    /// that does not fit is dropped and costs nothing).
    pub fn try_take_at(&self, n: u64, now: u64) -> bool {
        let rate = self.rate();
        if rate == 0 || n == 0 {
            return true;
        }
        let cost = u64::try_from(u128::from(n) * NS / u128::from(rate)).unwrap_or(u64::MAX);
        let tat = self.clock();
        let mut cur = tat.load(Ordering::Relaxed);
        loop {
            let new = cur.max(now).saturating_add(cost);
            if new.saturating_sub(now) > TAU_NS {
                return false;
            }
            match tat.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    pub fn try_take(&self, n: usize) -> bool {
        self.try_take_at(u64::try_from(n).unwrap_or(u64::MAX), now_ns())
    }

    /// Reserves `n` bytes now; the delay to sleep (zero when within budget).
    pub fn reserve(&self, n: usize) -> Duration {
        Duration::from_nanos(self.reserve_at(u64::try_from(n).unwrap_or(u64::MAX), now_ns()))
    }
}

const SHARDS: usize = 16;
type Shard = Mutex<HashMap<(u16, u32), Weak<Bucket>>>;

/// Process-wide registry of buckets by (node, user). Touched on connection open only.
#[derive(Debug)]
pub struct RateLimiters {
    shards: Vec<Shard>,
    /// Where buckets keep their clocks so that other data-plane processes share them.
    table: Option<RateTable>,
}

impl Default for RateLimiters {
    fn default() -> Self {
        Self::new(None)
    }
}

impl RateLimiters {
    /// Buckets with their clocks in `table` (when there is one), else their own.
    pub fn new(table: Option<RateTable>) -> Self {
        RateLimiters {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            table,
        }
    }

    /// The user's bucket (created on first use), with its rate set to `bytes_per_sec`.
    pub fn bucket(&self, node: u16, user_id: u32, bytes_per_sec: u64) -> Arc<Bucket> {
        let idx = (user_id as usize ^ usize::from(node)) % SHARDS;
        let Some(shard) = self.shards.get(idx) else {
            return Arc::new(Bucket::new(bytes_per_sec));
        };
        let mut map = match shard.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(b) = map.get(&(node, user_id)).and_then(Weak::upgrade) {
            b.set_rate(bytes_per_sec);
            return b;
        }
        let clock = self.table.as_ref().and_then(|t| t.clock(node, user_id, now_ns()));
        let b = Arc::new(Bucket::with_clock(bytes_per_sec, clock));
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert((node, user_id), Arc::downgrade(&b));
        b
    }

    /// Updates the rate of a live bucket (limit change in a new table generation).
    pub fn update(&self, node: u16, user_id: u32, bytes_per_sec: u64) {
        let idx = (user_id as usize ^ usize::from(node)) % SHARDS;
        if let Some(shard) = self.shards.get(idx) {
            let map = match shard.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if let Some(b) = map.get(&(node, user_id)).and_then(Weak::upgrade) {
                b.set_rate(bytes_per_sec);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn effective_rate_is_min_non_zero() {
        assert_eq!(effective_bytes_per_sec(0, 0), 0);
        assert_eq!(effective_bytes_per_sec(8, 0), 1_000_000);
        assert_eq!(effective_bytes_per_sec(0, 16), 2_000_000);
        assert_eq!(effective_bytes_per_sec(80, 16), 2_000_000);
    }

    /// Simulates `conns` readers sharing one bucket on a virtual clock for `secs` seconds:
    /// each reads a grant, sleeps the returned delay, repeats. The achieved rate must be within
    /// 10% of the limit (after the 1 s burst, which we include in the allowance).
    fn simulate(rate: u64, conns: usize, secs: u64) -> f64 {
        let b = Bucket::new(rate);
        let mut ready_at = vec![0u64; conns];
        let mut total = 0u64;
        let end = secs * 1_000_000_000;
        let grant = b.grant_len(256 * 1024) as u64;
        for _ in 0..10_000_000 {
            let (i, &t) = ready_at.iter().enumerate().min_by_key(|(_, t)| **t).unwrap();
            if t >= end {
                break;
            }
            let delay = b.reserve_at(grant, t);
            total += grant;
            ready_at[i] = t + delay + 1_000; // 1 µs of "work" per read
        }
        total as f64 / secs as f64
    }

    #[test]
    fn holds_rate_within_ten_percent_virtual_clock() {
        for (rate, conns) in [(125_000u64, 1usize), (1_250_000, 3), (12_500_000, 8)] {
            let got = simulate(rate, conns, 60);
            // 60 s at the rate plus at most the 1 s burst (and one grant per connection).
            let lo = rate as f64 * 0.9;
            let hi = rate as f64 * 1.1;
            assert!(got >= lo && got <= hi, "rate {rate} conns {conns}: got {got}");
        }
    }

    #[test]
    fn unlimited_never_waits_and_change_applies() {
        let b = Bucket::new(0);
        assert_eq!(b.reserve_at(1 << 30, 5), 0);
        b.set_rate(1000);
        // within burst: 1000 bytes at t=0 fits into the 1 s tolerance
        assert_eq!(b.reserve_at(1000, 0), 0);
        // the next 1000 bytes need one more second of budget
        assert_eq!(b.reserve_at(1000, 0), 1_000_000_000);
    }

    #[test]
    fn policing_drops_without_charging() {
        let b = Bucket::new(1000);
        assert!(b.try_take_at(1000, 0));
        assert!(!b.try_take_at(1, 0));
        assert!(!b.try_take_at(500, 0));
        // half a second later, 500 bytes of budget are back
        assert!(b.try_take_at(500, 500_000_000));
        assert!(!b.try_take_at(1, 500_000_000));
    }

    #[test]
    fn registry_shares_buckets_and_updates_rate() {
        let r = RateLimiters::default();
        let a = r.bucket(1, 7, 100);
        let b = r.bucket(1, 7, 100);
        assert!(Arc::ptr_eq(&a, &b));
        let c = r.bucket(2, 7, 100);
        assert!(!Arc::ptr_eq(&a, &c));
        r.update(1, 7, 555);
        assert_eq!(a.rate(), 555);
        drop((a, b));
        let d = r.bucket(1, 7, 1);
        assert_eq!(d.rate(), 1);
    }
    /// Two data-plane processes (two registries on one shm directory, as during an upgrade):
    /// one user's buckets draw on one clock, so together they get one second of burst and then
    /// the limit, not twice that; another user is not touched.
    #[test]
    fn buckets_of_two_processes_share_one_budget() {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let old = RateLimiters::new(Some(RateTable::open(d.path()).unwrap()));
        let new = RateLimiters::new(Some(RateTable::open(d.path()).unwrap()));
        let rate = 1_000_000;
        let a = old.bucket(1, 7, rate);
        let b = new.bucket(1, 7, rate);
        assert!(a.is_shared() && b.is_shared());
        let now = now_ns();
        // The burst: one second of bytes, taken half by each process.
        assert_eq!(a.reserve_at(rate / 2, now), 0);
        assert_eq!(b.reserve_at(rate / 2, now), 0);
        // Past it, each must wait for the other's bytes too.
        assert_eq!(b.reserve_at(rate / 10, now), 100_000_000);
        assert!(!a.try_take_at(rate / 10, now));
        // Another user's budget is untouched.
        let c = new.bucket(1, 8, rate);
        assert_eq!(c.reserve_at(rate, now), 0);
        // Without a table each process has its own clock (what this replaced).
        let (p, q) = (RateLimiters::default(), RateLimiters::default());
        let (x, y) = (p.bucket(1, 7, rate), q.bucket(1, 7, rate));
        assert!(!x.is_shared());
        assert_eq!(x.reserve_at(rate, now), 0);
        assert_eq!(y.reserve_at(rate, now), 0);
    }
}
