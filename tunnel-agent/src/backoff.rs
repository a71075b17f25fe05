//! Reconnect delays: jittered exponential backoff, 1 s doubling to 30 s.
//!
//! Pure state so it is tested without clocks; the connector sleeps for what
//! [`Backoff::next_delay`] returns and calls [`Backoff::reset`] once a
//! connection registers.

use std::time::Duration;

/// Spread of a busy refusal before any server gave a hint (a first start).
pub const DEFAULT_RECONNECT_SPREAD: Duration = Duration::from_secs(5);
/// Largest spread a server's hint may ask for.
pub const MAX_RECONNECT_SPREAD: Duration = Duration::from_secs(60);

/// The spread window from a `HelloAck`'s `reconnect_spread_ms` (0: no hint).
pub fn spread_from_hint(ms: u32) -> Duration {
    match ms {
        0 => DEFAULT_RECONNECT_SPREAD,
        ms => Duration::from_millis(u64::from(ms)).min(MAX_RECONNECT_SPREAD),
    }
}

/// The delay schedule of one agent.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    current: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), Duration::from_secs(30))
    }
}

impl Backoff {
    /// Starts at `base`, doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            current: base,
        }
    }

    /// The next delay. `jitter` in `[0, 1)` picks a point in the upper half
    /// of the current step ("equal jitter"), so a fleet that lost the server
    /// together does not come back in lockstep.
    pub fn next_delay(&mut self, jitter: f64) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = jitter.clamp(0.0, 1.0);
        step.mul_f64(0.5 + 0.5 * jitter)
    }

    /// The delay after the server refused the attempt as busy: the next
    /// backoff step plus a point (`spread_jitter` in `[0, 1)`) in the
    /// server's spread window, so a refused fleet comes back over the time the
    /// server needs to admit it instead of in waves.
    pub fn next_busy_delay(
        &mut self,
        jitter: f64,
        spread_jitter: f64,
        spread: Duration,
    ) -> Duration {
        self.next_delay(jitter) + spread.mul_f64(spread_jitter.clamp(0.0, 1.0))
    }

    /// Back to the first step (after a successful registration).
    pub fn reset(&mut self) {
        self.current = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::default();
        let upper: Vec<u64> = (0..8).map(|_| b.next_delay(1.0).as_secs()).collect();
        assert_eq!(upper, vec![1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
        assert_eq!(b.next_delay(0.5), Duration::from_millis(1500));
    }

    #[test]
    fn busy_refusals_spread_over_the_servers_window() {
        let spread = Duration::from_secs(20);
        let mut b = Backoff::default();
        assert_eq!(
            b.next_busy_delay(0.0, 0.0, spread),
            Duration::from_millis(500)
        );
        assert_eq!(b.next_busy_delay(1.0, 0.5, spread), Duration::from_secs(12));
        // The backoff keeps doubling underneath.
        assert_eq!(b.next_busy_delay(1.0, 1.0, spread), Duration::from_secs(24));
        b.reset();
        assert_eq!(
            b.next_busy_delay(0.0, 2.0, spread),
            Duration::from_millis(20_500)
        );
    }
}
