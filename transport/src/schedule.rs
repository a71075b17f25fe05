//! Interactive first: which of a connection's streams QUIC sends first.
//!
//! Every tunnel stream is classified by what it does, not by what it is: a
//! stream is **interactive** until it sends a burst no typist or request
//! makes (more than [`BULK_BYTES`] within one [`WINDOW`]), then **bulk**
//! until it has a whole window of near silence (under [`QUIET_BYTES`]).
//! Ports and front ends say nothing reliable: `kubectl exec` can run `cat`
//! on a large file, a port-forward can carry ssh or a download, the node
//! proxy's traffic is small requests and watch events but also the odd
//! large list. What a stream sends is the one thing that tells. Both ends
//! classify what they send, so a stream can be bulk one way (a download's
//! data) and interactive the other (its acknowledgements at the
//! application level, a shell's keystrokes).
//!
//! QUIC sends higher priorities first ([`quinn::SendStream::set_priority`]):
//! control frames (a stream's open and dial result) above interactive data
//! above bulk data. A keystroke then goes out in the next packet the
//! congestion window allows, however many bulk streams have data buffered;
//! quinn's round-robin among equal priorities alone would put it behind one
//! packet per busy stream. Bulk streams share the rest round-robin. What
//! priorities cannot shorten is the queue already in the network, which is
//! the congestion controller's job (`crate::congestion`).
//!
//! The WebSocket transport has no priorities (yamux takes streams in turn);
//! its queue is kept short instead (`crate::ws`, "The send queue").
//!
//! [`Classifier`] is the pure decision, fed the bytes a stream sends and the
//! time; `crate::stream::TunnelSend` applies its answers.

use std::time::{Duration, Instant};

/// A stream's open and dial result: ahead of everything.
pub const CONTROL_PRIORITY: i32 = 2;
/// Data of a stream classified interactive.
pub const INTERACTIVE_PRIORITY: i32 = 1;
/// Data of a stream classified bulk.
pub const BULK_PRIORITY: i32 = 0;

/// The period over which a stream's sending is judged.
pub const WINDOW: Duration = Duration::from_millis(250);
/// More than this within one window makes a stream bulk: 128 KiB/s, far
/// above typing, a shell's prompt or a watch event, and the first 32 KiB of
/// a transfer reach the stream's buffer within microseconds.
pub const BULK_BYTES: usize = 32 * 1024;
/// A bulk stream sending less than this in a whole window is interactive
/// again (a paused `logs -f`, a shell after `cat` ends). A bulk transfer
/// sends more than this every window even on a 40 KB/s link.
pub const QUIET_BYTES: usize = 4 * 1024;

/// What a stream's sending looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Interactive,
    Bulk,
}

impl Class {
    /// The QUIC send priority for data of this class.
    pub fn priority(self) -> i32 {
        match self {
            Class::Interactive => INTERACTIVE_PRIORITY,
            Class::Bulk => BULK_PRIORITY,
        }
    }
}

/// Classifies one stream's sending direction.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    class: Option<Class>,
    window_start: Option<Instant>,
    in_window: usize,
}

impl Classifier {
    /// The class so far (`None` before the first send).
    pub fn class(&self) -> Option<Class> {
        self.class
    }

    /// Records `bytes` about to be sent at `now`; returns the new class
    /// when it changed (the first send always answers).
    pub fn on_send(&mut self, now: Instant, bytes: usize) -> Option<Class> {
        let before = self.class;
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= WINDOW {
            // A window ended; two or more mean one passed in silence.
            let quiet = self.in_window < QUIET_BYTES || elapsed >= 2 * WINDOW;
            if quiet {
                self.class = Some(Class::Interactive);
            }
            self.window_start = Some(now);
            self.in_window = 0;
        }
        self.in_window = self.in_window.saturating_add(bytes);
        if self.in_window > BULK_BYTES {
            self.class = Some(Class::Bulk);
        }
        let now_class = *self.class.get_or_insert(Class::Interactive);
        (before != Some(now_class)).then_some(now_class)
    }
}

#[cfg(test)]
#[path = "schedule_tests.rs"]
mod quic_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_new_stream_starts_interactive_and_says_so_once() {
        let mut c = Classifier::default();
        let t = Instant::now();
        assert_eq!(c.class(), None);
        assert_eq!(c.on_send(t, 1), Some(Class::Interactive));
        assert_eq!(c.on_send(t + MS, 1), None);
        assert_eq!(c.class(), Some(Class::Interactive));
    }

    #[test]
    fn typing_and_small_requests_stay_interactive() {
        let mut c = Classifier::default();
        let t = Instant::now();
        c.on_send(t, 300);
        // 100 keystrokes a second and a 20 KB command output burst.
        for i in 1..1000u32 {
            assert_eq!(c.on_send(t + 10 * MS * i, 8), None);
        }
        assert_eq!(c.on_send(t + 10_001 * MS, 20_000), None);
        assert_eq!(c.class(), Some(Class::Interactive));
    }

    #[test]
    fn a_burst_past_the_limit_makes_a_stream_bulk_at_once() {
        let mut c = Classifier::default();
        let t = Instant::now();
        assert_eq!(c.on_send(t, 16 * 1024), Some(Class::Interactive));
        assert_eq!(
            c.on_send(t, 16 * 1024),
            None,
            "exactly the limit is not past it"
        );
        assert_eq!(c.on_send(t, 1), Some(Class::Bulk));
        // The very first chunk can already be past it.
        let mut big = Classifier::default();
        assert_eq!(big.on_send(t, 64 * 1024), Some(Class::Bulk));
    }

    #[test]
    fn a_transfer_at_weak_link_rate_stays_bulk() {
        let mut c = Classifier::default();
        let t = Instant::now();
        c.on_send(t, 64 * 1024);
        // 40 KB/s in 1 KB writes after the buffer filled: 10 KB per window.
        for i in 1..400u32 {
            assert_eq!(c.on_send(t + 25 * MS * i, 1000), None, "write {i}");
        }
        assert_eq!(c.class(), Some(Class::Bulk));
    }

    #[test]
    fn a_quiet_window_makes_a_bulk_stream_interactive_again() {
        let mut c = Classifier::default();
        let t = Instant::now();
        c.on_send(t, 64 * 1024);
        // A trickle under the quiet threshold for a whole window...
        assert_eq!(c.on_send(t + 100 * MS, 1000), None);
        assert_eq!(c.on_send(t + 300 * MS, 100), None, "the loud window ended");
        assert_eq!(c.on_send(t + 560 * MS, 100), Some(Class::Interactive));
        // ...or silence: the first keystroke after a pause is interactive.
        let mut d = Classifier::default();
        d.on_send(t, 64 * 1024);
        assert_eq!(d.on_send(t + 600 * MS, 1), Some(Class::Interactive));
    }

    #[test]
    fn priorities_order_control_interactive_bulk() {
        assert!(CONTROL_PRIORITY > Class::Interactive.priority());
        assert!(Class::Interactive.priority() > Class::Bulk.priority());
    }
}
