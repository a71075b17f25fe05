//! Rate-limited logging for events an anonymous client can trigger at will
//! (connection caps, enrollment failures): at most one line per interval,
//! with the count of lines suppressed since the last one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One event kind's log budget.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    state: Mutex<Option<(Instant, u64)>>,
}

impl LogLimit {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(None),
        }
    }

    /// `Some(suppressed)` when a line may be written now (`suppressed` events
    /// were not logged since the previous line), `None` to stay quiet.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *s {
            Some((last, suppressed)) if now.duration_since(*last) < self.every => {
                *suppressed += 1;
                None
            }
            slot => {
                let suppressed = slot.map_or(0, |(_, n)| n);
                *slot = Some((now, 0));
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let l = LogLimit::new(Duration::from_secs(1));
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t + Duration::from_millis(10)), None);
        assert_eq!(l.allow(t + Duration::from_millis(900)), None);
        assert_eq!(l.allow(t + Duration::from_millis(1000)), Some(2));
        assert_eq!(l.allow(t + Duration::from_millis(1001)), None);
    }
}
