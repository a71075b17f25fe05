//! A process-wide bound on the bytes gRPC calls hold in their message
//! decoders.
//!
//! A Konnectivity DATA message must be whole before it can be decoded, so a
//! call holds every byte of a message in progress (up to
//! [`MAX_MESSAGE`](super::MAX_MESSAGE)). HTTP/2 windows bound what sits in
//! the h2 crate's buffers, but not what many calls with half-sent large
//! messages hold at once. Each call keeps a [`Reservation`] the size of its
//! decoder's contents; growing it past the budget fails at once, so the call
//! ends with RESOURCE_EXHAUSTED instead of memory growing. Dropping the
//! reservation (the call ended, was reset or abandoned) gives the bytes back.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes all calls of the process may hold in partially received messages.
/// kube-apiserver's messages are a TLS record or an HTTP write (≤ 32 KiB),
/// so this holds thousands of calls in progress, or sixteen 4 MiB messages.
pub const BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// The budget every call of this process draws from.
pub static CALL_BUFFERS: Budget = Budget::new(BUDGET_BYTES);

/// A byte budget shared by calls.
#[derive(Debug)]
pub struct Budget {
    used: AtomicUsize,
    limit: usize,
}

/// The budget could not give the bytes asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the gRPC front end holds {used} bytes of partially received messages and may hold at most {limit}; this call needed {wanted} more")]
pub struct Exhausted {
    pub used: usize,
    pub limit: usize,
    pub wanted: usize,
}

impl Budget {
    pub const fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Bytes currently reserved.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty reservation that may grow.
    pub fn reservation(&self) -> Reservation<'_> {
        Reservation {
            budget: self,
            held: 0,
        }
    }

    fn take(&self, n: usize) -> Result<(), Exhausted> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .map(|_| ())
            .map_err(|used| Exhausted {
                used,
                limit: self.limit,
                wanted: n,
            })
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Bytes one call holds; returned to the budget when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a Budget,
    held: usize,
}

impl Reservation<'_> {
    /// Makes the reservation exactly `n` bytes. Shrinking always succeeds;
    /// growing fails (and keeps the old size) when the budget has no room.
    pub fn resize(&mut self, n: usize) -> Result<(), Exhausted> {
        if n > self.held {
            self.budget.take(n - self.held)?;
        } else {
            self.budget.give(self.held - n);
        }
        self.held = n;
        Ok(())
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_grow_within_the_budget_and_return_on_drop() {
        let b = Budget::new(100);
        let mut a = b.reservation();
        a.resize(60).unwrap();
        let mut c = b.reservation();
        assert_eq!(
            c.resize(50),
            Err(Exhausted {
                used: 60,
                limit: 100,
                wanted: 50
            })
        );
        assert_eq!(c.held(), 0, "a failed grow keeps the old size");
        c.resize(40).unwrap();
        assert_eq!(b.used(), 100);
        a.resize(10).unwrap();
        assert_eq!(b.used(), 50);
        drop(a);
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn the_error_names_the_limit() {
        let b = Budget::new(8);
        let mut r = b.reservation();
        let e = r.resize(9).unwrap_err().to_string();
        assert!(e.contains("at most 8"), "{e}");
    }
}
