//! Reconnect delays: jittered exponential backoff, 1 s doubling to 30 s.
//!
//! Pure state so it is tested without clocks; the connector sleeps for what
//! [`Backoff::next_delay`] returns and calls [`Backoff::reset`] once a
//! connection registers.

use std::time::Duration;

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
}
