//! Brutal congestion control (Hysteria 2's): a connection sends at a fixed rate, the rate its
//! client declared it can receive (capped by the node and the user's speed limit), whatever
//! loss the path shows, instead of backing off as Cubic or BBR would. Lost packets are made up
//! for: the window grows by the share of bytes that were not acknowledged over the last
//! seconds, up to a loss of 20 %.
//!
//! quinn has no hook for a controller's own pacing: it paces from the window (1.25 × window
//! per smoothed RTT), and the window bounds the bytes in flight. Hysteria's Brutal on quic-go
//! paces at the rate itself and keeps the window at twice the bandwidth-delay product as
//! headroom that never binds. Here the window *is* the rate: in flight for one RTT each, a
//! window of rate × RTT moves `rate` bytes per second, and quinn's pacer (25 % above it)
//! spreads the packets out without limiting them. Twice the BDP here would send at twice the
//! rate. Below two packets per RTT (tiny rates, or LAN and loopback RTTs) the minimum window
//! of two packets decides, and the connection sends faster than its rate.
//!
//! quinn builds a connection's controller during the QUIC handshake, before the client has
//! authenticated and declared its rate. [`RateSwitch`] is therefore built for every connection
//! of a node: the node's own controller (Cubic, NewReno, BBR) until the driver puts a rate into
//! the connection's [`SendRate`], Brutal at that rate from then on. The driver reaches the
//! controller through that shared cell only: quinn gives no access to a live connection's
//! controller.
//!
//! Time comes in as an argument (quinn passes `now`); nothing here reads a clock.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Seconds of history the ack rate is taken from: one slot per second, the current one
/// included.
const SLOTS: u64 = 5;
/// With fewer bytes acknowledged or lost than this in the history (about 50 full packets),
/// loss is not told from chance: the ack rate counts as 1.
const MIN_SAMPLE_BYTES: u64 = 50 * 1200;
/// Ack rates are in millionths.
const PPM: u64 = 1_000_000;
/// The lowest ack rate the window makes up for (0.8): past 20 % loss the path cannot carry
/// the rate, and sending more would only add to the loss.
const MIN_ACK_RATE: u64 = 800_000;
/// The smallest window, in packets: quinn sends only while the bytes in flight plus one packet
/// stay below the window.
const MIN_WINDOW_PACKETS: u64 = 2;
/// The window before any RTT was measured, in packets (quinn's initial window is about as
/// much). A connection is authenticated, so it has measured its RTT, before it gets a rate.
const NO_RTT_WINDOW_PACKETS: u64 = 10;
/// The largest window: 1 GiB is 10 Gbit/s over 800 ms. Whatever rate a client declares, the
/// arithmetic stays in range and quinn keeps pacing (it gives up above 4 GiB).
const MAX_WINDOW: u64 = 1 << 30;

/// A connection's fixed send rate in bytes per second, 0 = none (the node's own congestion
/// controller): written by the QUIC driver once the client authenticated, read by the
/// connection's controller on every event. Both run on the core's thread; the atomic is what
/// quinn's `Send + Sync` controller can hold.
#[derive(Debug, Default)]
pub(super) struct SendRate(AtomicU64);

impl SendRate {
    pub(super) fn set(&self, bytes_per_sec: u64) {
        self.0.store(bytes_per_sec, Ordering::Relaxed);
    }

    pub(super) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Bytes acknowledged and lost in one second of the connection's life.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    second: u64,
    acked: u64,
    lost: u64,
}

/// Brutal's state: the smoothed RTT, and the ack rate over the last [`SLOTS`] seconds.
#[derive(Clone, Debug)]
pub(super) struct Brutal {
    /// Seconds are counted from here (the controller's creation).
    origin: Instant,
    mtu: u64,
    srtt: Option<Duration>,
    slots: [Slot; SLOTS as usize],
    /// Share of the bytes in the history that were acknowledged, in millionths:
    /// [`MIN_ACK_RATE`]..=[`PPM`].
    ack_rate: u64,
}

impl Brutal {
    pub(super) fn new(now: Instant, mtu: u16) -> Self {
        Brutal {
            origin: now,
            mtu: u64::from(mtu),
            srtt: None,
            slots: [Slot::default(); SLOTS as usize],
            ack_rate: PPM,
        }
    }

    /// The connection's smoothed RTT, as quinn measured it.
    pub(super) fn on_rtt(&mut self, srtt: Duration) {
        self.srtt = Some(srtt);
    }

    pub(super) fn on_acked(&mut self, now: Instant, bytes: u64) {
        let s = self.slot(now);
        s.acked = s.acked.saturating_add(bytes);
    }

    pub(super) fn on_lost(&mut self, now: Instant, bytes: u64) {
        let s = self.slot(now);
        s.lost = s.lost.saturating_add(bytes);
        self.update_ack_rate(now);
    }

    pub(super) fn on_mtu(&mut self, mtu: u16) {
        self.mtu = u64::from(mtu);
    }

    /// Recomputes the ack rate from the slots of the last [`SLOTS`] seconds.
    pub(super) fn update_ack_rate(&mut self, now: Instant) {
        let current = self.second(now);
        let (acked, lost) = self
            .slots
            .iter()
            .filter(|s| current.saturating_sub(s.second) < SLOTS)
            .fold((0u64, 0u64), |(a, l), s| {
                (a.saturating_add(s.acked), l.saturating_add(s.lost))
            });
        let total = acked.saturating_add(lost);
        self.ack_rate = if total < MIN_SAMPLE_BYTES {
            PPM
        } else {
            // acked ≤ total, so the quotient is at most PPM.
            let r = u128::from(acked) * u128::from(PPM) / u128::from(total);
            u64::try_from(r).unwrap_or(PPM).max(MIN_ACK_RATE)
        };
    }

    /// The ack rate in millionths.
    #[cfg(test)]
    fn ack_rate(&self) -> u64 {
        self.ack_rate
    }

    /// The window for sending at `rate` bytes per second: rate × smoothed RTT ÷ ack rate,
    /// between two packets and [`MAX_WINDOW`].
    pub(super) fn window(&self, rate: u64) -> u64 {
        let min = MIN_WINDOW_PACKETS * self.mtu;
        let Some(rtt) = self.srtt else {
            return (NO_RTT_WINDOW_PACKETS * self.mtu).clamp(min, MAX_WINDOW);
        };
        // In u128, saturating: a client may declare u64::MAX bytes per second.
        let bdp = u128::from(rate)
            .checked_mul(rtt.as_nanos())
            .map_or(u128::MAX, |b| b / 1_000_000_000)
            .min(u128::from(MAX_WINDOW));
        // ack_rate ≥ MIN_ACK_RATE > 0; bdp ≤ 2^30, so nothing overflows.
        let w = bdp * u128::from(PPM) / u128::from(self.ack_rate.max(MIN_ACK_RATE));
        u64::try_from(w).unwrap_or(MAX_WINDOW).clamp(min, MAX_WINDOW)
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    /// The slot of `now`'s second, emptied first if it still holds an older second.
    fn slot(&mut self, now: Instant) -> &mut Slot {
        let second = self.second(now);
        // In range: the remainder is below SLOTS, the array's length.
        let s = &mut self.slots[(second % SLOTS) as usize];
        if s.second != second {
            *s = Slot {
                second,
                ..Slot::default()
            };
        }
        s
    }
}

/// quinn's controller of a connection that may get a fixed rate: the node's own controller
/// while the connection's [`SendRate`] is 0, Brutal at the rate once it is set (and the node's
/// own again if it went back to 0). Brutal follows the RTT throughout, and counts
/// acknowledgements and losses while it is in charge (the handshake's losses under the other
/// controller are not its business). The node's controller sees no events while Brutal is in
/// charge: were it to take over again, it would start from its last, smaller window.
pub(super) struct RateSwitch {
    rate: Arc<SendRate>,
    fallback: Box<dyn Controller>,
    brutal: Brutal,
}

impl RateSwitch {
    /// The fixed rate, or 0.
    fn fixed(&self) -> u64 {
        self.rate.get()
    }
}

impl Controller for RateSwitch {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        if self.fixed() == 0 {
            self.fallback.on_sent(now, bytes, last_packet_number);
        }
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.brutal.on_rtt(rtt.get());
        if self.fixed() == 0 {
            self.fallback.on_ack(now, sent, bytes, app_limited, rtt);
        } else {
            self.brutal.on_acked(now, bytes);
        }
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        if self.fixed() == 0 {
            self.fallback
                .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
        } else {
            self.brutal.update_ack_rate(now);
        }
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if self.fixed() == 0 {
            self.fallback
                .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        } else {
            // Brutal does not back off, not even on persistent congestion; an ECN mark
            // (0 bytes lost) changes nothing either.
            self.brutal.on_lost(now, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.fallback.on_mtu_update(new_mtu);
        self.brutal.on_mtu(new_mtu);
    }

    fn window(&self) -> u64 {
        match self.fixed() {
            0 => self.fallback.window(),
            rate => self.brutal.window(rate),
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        match self.fixed() {
            0 => self.fallback.metrics(),
            rate => {
                let mut m = ControllerMetrics::default();
                m.congestion_window = self.brutal.window(rate);
                m.pacing_rate = Some(rate.saturating_mul(8));
                m
            }
        }
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(RateSwitch {
            rate: self.rate.clone(),
            fallback: self.fallback.clone_box(),
            brutal: self.brutal.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.fallback.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds one connection's [`RateSwitch`] around the node's controller, watching `rate`. One
/// factory per connection: quinn gives a factory nothing that tells connections apart.
pub(super) struct RateSwitchFactory {
    pub(super) fallback: Arc<dyn ControllerFactory + Send + Sync>,
    pub(super) rate: Arc<SendRate>,
}

impl ControllerFactory for RateSwitchFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(RateSwitch {
            rate: self.rate.clone(),
            fallback: self.fallback.clone().build(now, current_mtu),
            brutal: Brutal::new(now, current_mtu),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const MTU: u16 = 1200;
    const MBPS_10: u64 = 1_250_000;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    /// 10 Mbit/s at 50 ms: the bandwidth-delay product, 62 500 bytes.
    #[test]
    fn window_is_rate_times_rtt() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU);
        b.on_rtt(Duration::from_millis(50));
        assert_eq!(b.window(MBPS_10), 62_500);
        b.on_rtt(Duration::from_millis(200));
        assert_eq!(b.window(MBPS_10), 250_000);
        // 100 Mbit/s at 20 ms.
        b.on_rtt(Duration::from_millis(20));
        assert_eq!(b.window(12_500_000), 250_000);
    }

    /// Loss raises the window by the share lost (10 % lost: ÷ 0.9), up to ÷ 0.8.
    #[test]
    fn loss_raises_the_window_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU);
        b.on_rtt(Duration::from_millis(50));
        for ms in 0..100 {
            b.on_acked(at(t0, ms * 10), 900);
        }
        b.on_lost(at(t0, 999), 10_000);
        assert_eq!(b.ack_rate(), 900_000);
        assert_eq!(b.window(MBPS_10), 69_444);
        // Half of what follows is lost: the history says 50 % in all, the window stops at
        // ÷ 0.8.
        for ms in 0..100 {
            b.on_acked(at(t0, 1000 + ms * 10), 100);
        }
        b.on_lost(at(t0, 1999), 90_000);
        assert_eq!(b.ack_rate(), MIN_ACK_RATE);
        assert_eq!(b.window(MBPS_10), 78_125);
    }

    /// Too few bytes to tell: a loss of 1 of 10 packets does not raise the window.
    #[test]
    fn a_few_packets_are_not_a_sample() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU);
        b.on_rtt(Duration::from_millis(50));
        for k in 0..9 {
            b.on_acked(at(t0, k), 1200);
        }
        b.on_lost(at(t0, 10), 1200);
        assert_eq!(b.ack_rate(), PPM);
        assert_eq!(b.window(MBPS_10), 62_500);
    }

    /// Losses older than the history no longer count; the slots are reused.
    #[test]
    fn old_losses_expire() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU);
        b.on_rtt(Duration::from_millis(50));
        b.on_acked(t0, 60_000);
        b.on_lost(t0, 60_000);
        assert_eq!(b.ack_rate(), MIN_ACK_RATE);
        // Four seconds on, second 0 is still in the history: 360 of 420 kB acknowledged.
        b.on_acked(at(t0, 4_000), 300_000);
        b.update_ack_rate(at(t0, 4_999));
        assert_eq!(b.ack_rate(), 857_142);
        // Five seconds on, it has left (and its slot holds second 5).
        b.on_acked(at(t0, 5_000), 60_000);
        b.update_ack_rate(at(t0, 5_000));
        assert_eq!(b.ack_rate(), PPM);
        assert_eq!(b.slots[0].second, 5);
        assert_eq!(b.slots[0].lost, 0);
    }

    /// Whatever the rate and RTT, the window stays between two packets and 1 GiB.
    #[test]
    fn extreme_rates_stay_in_range() {
        let t0 = Instant::now();
        let mut b = Brutal::new(t0, MTU);
        assert_eq!(b.window(MBPS_10), 12_000, "no RTT yet: ten packets");
        b.on_rtt(Duration::from_micros(100));
        // Loopback: 10 Mbit/s × 100 µs is 125 bytes; two packets go.
        assert_eq!(b.window(MBPS_10), 2400);
        assert_eq!(b.window(1), 2400);
        b.on_rtt(Duration::from_secs(3600));
        assert_eq!(b.window(u64::MAX), MAX_WINDOW);
        b.on_rtt(Duration::ZERO);
        assert_eq!(b.window(u64::MAX), 2400);
        b.on_rtt(Duration::MAX);
        assert_eq!(b.window(u64::MAX), MAX_WINDOW);
        assert_eq!(b.window(1), MAX_WINDOW);
        b.on_mtu(1452);
        b.on_rtt(Duration::from_micros(1));
        assert_eq!(b.window(MBPS_10), 2904);
        // Byte counts that would overflow saturate.
        b.on_acked(t0, u64::MAX);
        b.on_acked(t0, u64::MAX);
        b.on_lost(t0, u64::MAX);
        assert!((MIN_ACK_RATE..=PPM).contains(&b.ack_rate()));
    }

    /// An instant before the controller's creation counts as its first second.
    #[test]
    fn time_before_the_origin_is_second_zero() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = Brutal::new(t0, MTU);
        b.on_acked(t0 - Duration::from_secs(5), 1000);
        assert_eq!(b.slots[0].acked, 1000);
    }

    /// The node's controller until the driver sets a rate; Brutal's window while it is set;
    /// the node's again at 0.
    #[test]
    fn the_switch_follows_the_shared_rate() {
        let t0 = Instant::now();
        let rate = Arc::new(SendRate::default());
        let factory = Arc::new(RateSwitchFactory {
            fallback: Arc::new(quinn::congestion::CubicConfig::default()),
            rate: rate.clone(),
        });
        let mut c = factory.clone().build(t0, MTU);
        let cubic = quinn::congestion::CubicConfig::default();
        let cubic_initial = Arc::new(cubic).build(t0, MTU).window();
        assert_eq!(c.window(), cubic_initial);
        assert_eq!(c.initial_window(), cubic_initial);
        // A loss under Cubic halves (×0.7) its window; Brutal did not count it.
        c.on_sent(t0, 1200, 1);
        c.on_congestion_event(at(t0, 10), t0, false, 1200);
        let cubic_after_loss = c.window();
        assert!(cubic_after_loss < cubic_initial);

        rate.set(MBPS_10);
        // No RTT measured through `on_ack` here (quinn's RTT estimator cannot be made outside
        // quinn): ten packets, then the BDP once the RTT is known.
        assert_eq!(c.window(), 12_000);
        let mut sw = c.into_any().downcast::<RateSwitch>().unwrap();
        sw.brutal.on_rtt(Duration::from_millis(50));
        assert_eq!(sw.window(), 62_500);
        assert_eq!(sw.metrics().pacing_rate, Some(10_000_000));
        // Loss raises Brutal's window instead of lowering it; the clone shares the rate.
        for ms in 0..100 {
            sw.on_congestion_event(at(t0, 20 + ms), t0, true, 1200);
        }
        assert_eq!(sw.window(), 78_125);
        let copy = sw.clone_box();
        assert_eq!(copy.window(), 78_125);
        rate.set(2 * MBPS_10);
        assert_eq!(copy.window(), 156_250);
        // Back to 0: Cubic, where it was.
        rate.set(0);
        assert_eq!(sw.window(), cubic_after_loss);
        assert_eq!(copy.window(), cubic_after_loss);
    }
}
