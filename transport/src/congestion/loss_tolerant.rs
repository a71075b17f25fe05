//! CUBIC that does not back off for random loss.
//!
//! Edge links lose packets for reasons that are not congestion (radio,
//! a flaky DSL line, a policer upstream). CUBIC treats every loss as a full
//! queue and cuts its window by 30 %, so at 1 % random loss on a 40 ms link
//! it never gets near the link's rate. quinn's BBR does not back off for
//! loss, but it also ignores the drop-tail overflow it causes itself: on the
//! weak-link bench it lost half of what it sent at the bottleneck, crowding
//! out everything else on the link.
//!
//! This controller keeps CUBIC's window and its reaction to congestion, and
//! only filters which losses count as congestion ([`LossClassifier`]):
//! - a loss while the path shows a standing queue (smoothed RTT above the
//!   minimum by [`queue_threshold`]) is congestion: the link is full;
//! - so is any loss while more than [`LOSS_RATE_LIMIT`] of the bytes of the
//!   last two round trips were lost, counting only once at least
//!   [`MIN_LOST_BYTES`] were (a shallow-buffered bottleneck can overflow
//!   without a visible queue; BBRv2 uses the same 2 % bound and likewise
//!   needs several losses in a round, or one loss in a small window would
//!   already be "2 %");
//! - ECN marks and persistent congestion always are;
//! - other losses (a few, with an empty queue) are treated as random and do
//!   not shrink the window. The lost packets are retransmitted as usual.
//!
//! Against a competing loss-based flow that keeps the queue full, every loss
//! is seen as congestion and this behaves as plain CUBIC.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};

/// Losses beyond this fraction of the bytes sent over the last two round
/// trips count as congestion even without a visible queue.
pub const LOSS_RATE_LIMIT: f64 = 0.02;

/// Fewer lost bytes than this in two round trips (about four full-size
/// packets) never count as a high loss rate, whatever the window.
pub const MIN_LOST_BYTES: u64 = 4 * 1200;

/// The standing queue (smoothed RTT − minimum RTT) above which a loss is
/// congestion: a quarter of the minimum RTT, and at least 2 ms so the
/// jitter of a fast path is not taken for a queue.
pub fn queue_threshold(min_rtt: Duration) -> Duration {
    (min_rtt / 4).max(Duration::from_millis(2))
}

/// What a loss event means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossVerdict {
    Congestion,
    Random,
}

/// The pure part: RTT and delivery bookkeeping and the verdict per loss.
#[derive(Debug, Clone)]
pub struct LossClassifier {
    srtt: Duration,
    min_rtt: Duration,
    /// Bytes acked and lost in the current and the previous round trip.
    acked: [u64; 2],
    lost: [u64; 2],
    round_start: Option<Instant>,
}

impl Default for LossClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl LossClassifier {
    pub fn new() -> Self {
        Self {
            srtt: Duration::ZERO,
            min_rtt: Duration::ZERO,
            acked: [0; 2],
            lost: [0; 2],
            round_start: None,
        }
    }

    /// An ack of `bytes`, with the connection's current RTT estimates.
    pub fn on_ack(&mut self, now: Instant, bytes: u64, srtt: Duration, min_rtt: Duration) {
        self.srtt = srtt;
        self.min_rtt = min_rtt;
        self.roll(now);
        self.acked[0] += bytes;
    }

    /// A loss of `lost_bytes` (0 for an ECN mark).
    pub fn on_loss(&mut self, now: Instant, lost_bytes: u64, persistent: bool) -> LossVerdict {
        self.roll(now);
        self.lost[0] += lost_bytes;
        if persistent || lost_bytes == 0 || self.queue_standing() || self.loss_rate_high() {
            LossVerdict::Congestion
        } else {
            LossVerdict::Random
        }
    }

    fn queue_standing(&self) -> bool {
        // Before the first RTT sample there is no evidence either way:
        // behave as CUBIC would.
        self.min_rtt.is_zero()
            || self.srtt.saturating_sub(self.min_rtt) >= queue_threshold(self.min_rtt)
    }

    /// Loss fraction of the last two round trips, this event included.
    pub fn loss_rate(&self) -> f64 {
        let lost = self.lost[0] + self.lost[1];
        let total = lost + self.acked[0] + self.acked[1];
        if total == 0 {
            0.0
        } else {
            lost as f64 / total as f64
        }
    }

    fn loss_rate_high(&self) -> bool {
        self.lost[0] + self.lost[1] >= MIN_LOST_BYTES && self.loss_rate() > LOSS_RATE_LIMIT
    }

    /// Starts a new round every smoothed RTT; the oldest round is forgotten.
    fn roll(&mut self, now: Instant) {
        let round = self.srtt.max(Duration::from_millis(1));
        match self.round_start {
            Some(start) if now.saturating_duration_since(start) < round => {}
            _ => {
                self.acked = [0, self.acked[0]];
                self.lost = [0, self.lost[0]];
                self.round_start = Some(now);
            }
        }
    }
}

/// The controller: CUBIC (or any inner controller) behind a [`LossClassifier`].
pub struct LossTolerant {
    inner: Box<dyn Controller>,
    classifier: LossClassifier,
    /// Loss events not passed on, for tests and debugging.
    ignored: u64,
}

impl LossTolerant {
    pub fn new(inner: Box<dyn Controller>) -> Self {
        Self {
            inner,
            classifier: LossClassifier::new(),
            ignored: 0,
        }
    }

    /// Loss events treated as random so far.
    pub fn ignored_losses(&self) -> u64 {
        self.ignored
    }
}

impl Controller for LossTolerant {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.classifier.on_ack(now, bytes, rtt.get(), rtt.min());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        match self
            .classifier
            .on_loss(now, lost_bytes, is_persistent_congestion)
        {
            LossVerdict::Congestion => {
                self.inner
                    .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes)
            }
            LossVerdict::Random => self.ignored += 1,
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            classifier: self.classifier.clone(),
            ignored: self.ignored,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Builds [`LossTolerant`] controllers around `inner`'s.
pub struct LossTolerantConfig {
    pub inner: Arc<dyn ControllerFactory + Send + Sync>,
}

impl ControllerFactory for LossTolerantConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LossTolerant::new(
            self.inner.clone().build(now, current_mtu),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A classifier that has seen `rounds` round trips of `per_round` acked
    /// bytes at the given RTTs.
    fn warmed(t0: Instant, srtt: Duration, min: Duration, per_round: u64) -> LossClassifier {
        let mut c = LossClassifier::new();
        for i in 0..4u32 {
            c.on_ack(t0 + srtt * i, per_round, srtt, min);
        }
        c
    }

    #[test]
    fn an_isolated_loss_with_an_empty_queue_is_random() {
        let t0 = Instant::now();
        let mut c = warmed(t0, 41 * MS, 40 * MS, 100_000);
        assert_eq!(c.on_loss(t0 + 164 * MS, 1200, false), LossVerdict::Random);
    }

    #[test]
    fn a_loss_behind_a_standing_queue_is_congestion() {
        let t0 = Instant::now();
        // 12 ms of queue on a 40 ms path: above the 10 ms threshold.
        let mut c = warmed(t0, 52 * MS, 40 * MS, 100_000);
        assert_eq!(
            c.on_loss(t0 + 210 * MS, 1200, false),
            LossVerdict::Congestion
        );
    }

    #[test]
    fn many_losses_are_congestion_even_without_a_queue() {
        let t0 = Instant::now();
        let mut c = warmed(t0, 41 * MS, 40 * MS, 100_000);
        let now = t0 + 164 * MS;
        // 1 % of the bytes: random.
        assert_eq!(c.on_loss(now, 1_000, false), LossVerdict::Random);
        // Then 3 % more within the same round: over the 2 % limit.
        assert_eq!(c.on_loss(now, 6_000, false), LossVerdict::Congestion);
        assert!(c.loss_rate() > LOSS_RATE_LIMIT, "{}", c.loss_rate());
    }

    #[test]
    fn one_loss_in_a_small_window_is_not_a_high_loss_rate() {
        let t0 = Instant::now();
        // 20 packets a round: one lost packet is 2.9 % of two rounds.
        let mut c = warmed(t0, 41 * MS, 40 * MS, 20 * 1200);
        assert_eq!(c.on_loss(t0 + 164 * MS, 1200, false), LossVerdict::Random);
        assert!(c.loss_rate() > LOSS_RATE_LIMIT);
        // Four lost packets in the same two rounds are.
        assert_eq!(
            c.on_loss(t0 + 165 * MS, 3 * 1200, false),
            LossVerdict::Congestion
        );
    }

    #[test]
    fn old_rounds_are_forgotten() {
        let t0 = Instant::now();
        let srtt = 41 * MS;
        let mut c = warmed(t0, srtt, 40 * MS, 100_000);
        assert_eq!(
            c.on_loss(t0 + 4 * srtt, 5_000, false),
            LossVerdict::Congestion
        );
        // Two clean rounds later the burst no longer counts.
        c.on_ack(t0 + 5 * srtt, 100_000, srtt, 40 * MS);
        c.on_ack(t0 + 6 * srtt, 100_000, srtt, 40 * MS);
        assert!(c.loss_rate() < 0.001, "{}", c.loss_rate());
        assert_eq!(c.on_loss(t0 + 6 * srtt, 1_200, false), LossVerdict::Random);
    }

    #[test]
    fn ecn_persistent_congestion_and_no_rtt_yet_are_congestion() {
        let t0 = Instant::now();
        let mut c = warmed(t0, 41 * MS, 40 * MS, 100_000);
        assert_eq!(c.on_loss(t0, 0, false), LossVerdict::Congestion, "ECN mark");
        assert_eq!(c.on_loss(t0, 1_200, true), LossVerdict::Congestion);
        let mut fresh = LossClassifier::new();
        assert_eq!(fresh.on_loss(t0, 1_200, false), LossVerdict::Congestion);
    }

    #[test]
    fn the_queue_threshold_scales_with_the_path() {
        assert_eq!(queue_threshold(40 * MS), 10 * MS);
        assert_eq!(queue_threshold(200 * MS), 50 * MS);
        assert_eq!(queue_threshold(Duration::from_micros(100)), 2 * MS);
    }

    #[test]
    fn random_losses_leave_cubics_window_alone() {
        use quinn::congestion::CubicConfig;
        let t0 = Instant::now();
        let cubic = || Arc::new(CubicConfig::default()).build(t0, 1200);
        let (loss_at, sent_at) = (t0 + 200 * MS, t0 + 150 * MS);

        // quinn's RttEstimator cannot be built outside quinn, so the RTT
        // evidence goes into the classifier directly.
        let mut tolerant = LossTolerant::new(cubic());
        let before = tolerant.window();
        tolerant.classifier = warmed(t0, 41 * MS, 40 * MS, 100_000);
        tolerant.on_congestion_event(loss_at, sent_at, false, 1200);
        assert_eq!(
            tolerant.window(),
            before,
            "random loss must not shrink the window"
        );
        assert_eq!(tolerant.ignored_losses(), 1);

        // Built by the factory, without RTT evidence yet: exactly CUBIC.
        let mut fresh = Arc::new(LossTolerantConfig {
            inner: Arc::new(CubicConfig::default()),
        })
        .build(t0, 1200);
        let mut plain = cubic();
        fresh.on_congestion_event(loss_at, sent_at, false, 1200);
        plain.on_congestion_event(loss_at, sent_at, false, 1200);
        assert_eq!(fresh.window(), plain.window());
        assert!(fresh.window() < before);
    }
}
