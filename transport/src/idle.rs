//! The idle clock of a carried stream: any byte either way restarts it, and
//! [`IdleClock::expired`] resolves once none moved for the idle timeout.
//!
//! Shared by the byte-stream splice and the gRPC front end's DATA pump, so
//! `--stream-idle-timeout` means the same thing on every front end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// When a stream last moved a byte (cheap to touch from several tasks).
#[derive(Debug)]
pub struct IdleClock {
    started: Instant,
    /// Milliseconds since `started` of the last byte moved.
    last_ms: AtomicU64,
}

impl Default for IdleClock {
    fn default() -> Self {
        Self::new()
    }
}

impl IdleClock {
    pub fn new() -> Self {
        IdleClock {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    /// Records activity now.
    pub fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the stream counts as idle if nothing moves before then.
    pub fn due(&self, idle: Duration) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    /// Resolves once nothing moved for `idle`; never with `None`.
    pub async fn expired(&self, idle: Option<Duration>) {
        let Some(idle) = idle else {
            return std::future::pending().await;
        };
        loop {
            let due = self.due(idle);
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_after_idle_and_touch_postpones() {
        let clock = IdleClock::new();
        let idle = Duration::from_secs(10);
        tokio::time::advance(Duration::from_secs(6)).await;
        clock.touch();
        let started = Instant::now();
        clock.expired(Some(idle)).await;
        // Expiry counts from the touch at 6 s, not from the start.
        assert!(started.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn never_expires_without_a_timeout() {
        let clock = IdleClock::new();
        let r = tokio::time::timeout(Duration::from_secs(3600), clock.expired(None)).await;
        assert!(r.is_err());
    }
}
