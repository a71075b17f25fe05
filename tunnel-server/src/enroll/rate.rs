//! Per-source-IP rate limit of enrollment attempts (`--enroll-attempts-per-minute`).
//!
//! Enrollment needs no certificate, so anyone who reaches the agent port can
//! guess tokens. Each source IP gets a token bucket of `per_minute` attempts
//! that refills continuously; an attempt beyond it is answered
//! `429 Too Many Requests` with `Retry-After` (seconds until one attempt is
//! available), which the agent retries after. The table is bounded: when it
//! is full, buckets that have refilled completely (idle sources) are dropped,
//! and if none has, the new source shares the limit of an "overflow" bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most source IPs tracked at once.
const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// The decision logic (sans-IO: the caller passes `now`).
#[derive(Debug)]
pub struct RateTable {
    per_minute: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
}

impl RateTable {
    /// `per_minute` attempts per source, at most `max_sources` sources tracked.
    pub fn new(per_minute: u32, max_sources: usize, now: Instant) -> Self {
        let full = Bucket {
            tokens: f64::from(per_minute),
            updated: now,
        };
        Self {
            per_minute: f64::from(per_minute.max(1)),
            max_sources,
            buckets: HashMap::new(),
            overflow: full,
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_minute / 60.0).min(self.per_minute);
        b.updated = now;
    }

    /// Takes one attempt for `ip`, or says how long until one is available.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_sources {
            let per_minute = self.per_minute;
            self.buckets.retain(|_, b| {
                let idle = now.saturating_duration_since(b.updated).as_secs_f64();
                b.tokens + idle * per_minute / 60.0 < per_minute
            });
        }
        let mut bucket = match self.buckets.get(&ip) {
            Some(b) => *b,
            None if self.buckets.len() < self.max_sources => Bucket {
                tokens: self.per_minute,
                updated: now,
            },
            None => {
                let mut b = self.overflow;
                let r = self.take(&mut b, now);
                self.overflow = b;
                return r;
            }
        };
        let r = self.take(&mut bucket, now);
        self.buckets.insert(ip, bucket);
        r
    }

    fn take(&self, b: &mut Bucket, now: Instant) -> Result<(), Duration> {
        self.refill(b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) * 60.0 / self.per_minute;
            Err(Duration::from_secs_f64(wait.max(0.0)))
        }
    }
}

/// The table the enrollment endpoint shares between connections.
#[derive(Debug)]
pub struct EnrollRate(Mutex<RateTable>);

impl EnrollRate {
    /// `--enroll-attempts-per-minute`.
    pub fn new(per_minute: u32) -> Self {
        Self(Mutex::new(RateTable::new(
            per_minute,
            MAX_SOURCES,
            Instant::now(),
        )))
    }

    /// Takes one attempt for `ip`; `Err(retry_after)` when it is over its limit.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(ip, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_attempt_per_refill_interval() {
        let t = Instant::now();
        let mut r = RateTable::new(6, 100, t);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..6 {
            r.check(a, t).unwrap();
        }
        // 6 per minute: the next attempt is available 10 s later.
        let wait = r.check(a, t).unwrap_err();
        assert_eq!(wait.as_secs(), 10);
        // Another source is not affected.
        r.check(b, t).unwrap();
        assert!(r.check(a, t + Duration::from_secs(9)).is_err());
        r.check(a, t + Duration::from_secs(10)).unwrap();
    }

    #[test]
    fn the_table_is_bounded() {
        let t = Instant::now();
        let mut r = RateTable::new(1, 2, t);
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        r.check(ip(1), t).unwrap();
        r.check(ip(2), t).unwrap();
        // Full of busy sources: newcomers share the overflow bucket.
        r.check(ip(3), t).unwrap();
        assert!(r.check(ip(4), t).is_err());
        assert_eq!(r.buckets.len(), 2);
        // A minute later the old buckets are full again and make room.
        let later = t + Duration::from_secs(61);
        r.check(ip(5), later).unwrap();
        assert!(r.buckets.contains_key(&ip(5)));
    }
}
