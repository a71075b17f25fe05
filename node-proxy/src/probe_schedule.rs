//! When the next health probe is due, as plain functions over instants.
//!
//! A probe is an HTTP request over the node's link. On a 40 KB/s link a
//! probe every 500 ms costs more than everything else the idle node sends,
//! so with `--apiserver tunnel` the prober lets the tunnel answer most of the
//! questions a probe would:
//!
//! - **The tunnel is down**: the hub is offline at once (no probe needed) and
//!   nothing is probed until the tunnel is back; a probe could only fail.
//! - **Starting or offline**: probe every `interval`, so the hub comes back
//!   as soon as the hysteresis allows.
//! - **Online**: probe only when someone needs the answer: a proxied request
//!   that has waited `interval` for its response headers (a probe failure then
//!   sends it to the cache instead of letting it hang on a black-holed link),
//!   or after `idle_interval` without any upstream answer (so the reachability
//!   gauge is never staler than that). Real traffic that is answered counts
//!   as a successful probe.
//!
//! Without a liveness signal (`--apiserver https://…`, the hub does not own
//! the link) the prober probes every `interval`, as it always did.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::health::Reachability;

/// The two intervals of the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSchedule {
    /// `--hub-probe-interval`: the pace while starting, offline, or while a request waits.
    pub interval: Duration,
    /// `--hub-idle-probe-interval`: with a liveness signal, online and
    /// quiet, a probe after this long without an upstream answer (`None`: never).
    pub idle_interval: Option<Duration>,
}

/// What the prober knows when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeInputs {
    pub now: Instant,
    pub state: Reachability,
    /// `None` without a liveness signal; else whether the tunnel is up.
    pub link_up: Option<bool>,
    /// When the last probe started.
    pub last_probe: Option<Instant>,
    /// When upstream last answered (a probe or a proxied request).
    pub last_answer: Option<Instant>,
    /// Since when the longest-waiting proxied request has waited for its answer.
    pub oldest_waiting: Option<Instant>,
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeDue {
    /// Probe at this instant (now or earlier: at once).
    At(Instant),
    /// No probe until something changes (the link, the state, a new waiter).
    Nothing,
}

impl ProbeSchedule {
    /// When the next probe is due.
    pub fn next(&self, i: ProbeInputs) -> ProbeDue {
        let paced = |from: Option<Instant>| match from {
            Some(t) => t + self.interval,
            None => i.now,
        };
        match (i.link_up, i.state) {
            (None, _) => ProbeDue::At(paced(i.last_probe)),
            (Some(false), _) => ProbeDue::Nothing,
            (Some(true), Reachability::Starting | Reachability::Offline) => {
                ProbeDue::At(paced(i.last_probe))
            }
            (Some(true), Reachability::Online) => {
                let for_waiter = i
                    .oldest_waiting
                    .map(|w| (w + self.interval).max(paced(i.last_probe)));
                let quiet_since = i.last_probe.max(i.last_answer);
                let for_gauge = self
                    .idle_interval
                    .map(|idle| quiet_since.map_or(i.now, |t| t + idle));
                match (for_waiter, for_gauge) {
                    (Some(a), Some(b)) => ProbeDue::At(a.min(b)),
                    (Some(t), None) | (None, Some(t)) => ProbeDue::At(t),
                    (None, None) => ProbeDue::Nothing,
                }
            }
        }
    }
}

/// Proxied requests waiting for their response headers, oldest first.
#[derive(Debug, Default)]
pub struct Waiters {
    next_id: u64,
    waiting: BTreeSet<(Instant, u64)>,
}

/// One waiting request, to hand back to [`Waiters::end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaiterId(Instant, u64);

impl Waiters {
    /// A request starts waiting at `now`.
    pub fn begin(&mut self, now: Instant) -> WaiterId {
        self.next_id = self.next_id.wrapping_add(1);
        self.waiting.insert((now, self.next_id));
        WaiterId(now, self.next_id)
    }

    /// The request got its answer, failed, or was abandoned.
    pub fn end(&mut self, id: WaiterId) {
        self.waiting.remove(&(id.0, id.1));
    }

    /// Since when the longest-waiting request has waited.
    pub fn oldest(&self) -> Option<Instant> {
        self.waiting.first().map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(500);
    const IDLE: Duration = Duration::from_secs(60);

    fn schedule() -> ProbeSchedule {
        ProbeSchedule {
            interval: I,
            idle_interval: Some(IDLE),
        }
    }

    fn inputs(now: Instant, state: Reachability, link_up: Option<bool>) -> ProbeInputs {
        ProbeInputs {
            now,
            state,
            link_up,
            last_probe: None,
            last_answer: None,
            oldest_waiting: None,
        }
    }

    #[test]
    fn without_a_liveness_signal_every_interval_whatever_the_state() {
        let t0 = Instant::now();
        for state in [
            Reachability::Starting,
            Reachability::Online,
            Reachability::Offline,
        ] {
            let mut i = inputs(t0, state, None);
            assert_eq!(schedule().next(i), ProbeDue::At(t0));
            i.last_probe = Some(t0);
            i.last_answer = Some(t0);
            assert_eq!(schedule().next(i), ProbeDue::At(t0 + I));
        }
    }

    #[test]
    fn a_down_tunnel_is_never_probed() {
        let t0 = Instant::now();
        for state in [Reachability::Starting, Reachability::Offline] {
            let mut i = inputs(t0, state, Some(false));
            i.oldest_waiting = Some(t0);
            assert_eq!(schedule().next(i), ProbeDue::Nothing);
        }
    }

    #[test]
    fn starting_or_offline_with_the_tunnel_up_probes_at_the_fast_pace() {
        let t0 = Instant::now();
        let mut i = inputs(t0, Reachability::Offline, Some(true));
        assert_eq!(schedule().next(i), ProbeDue::At(t0));
        i.last_probe = Some(t0);
        assert_eq!(schedule().next(i), ProbeDue::At(t0 + I));
    }

    #[test]
    fn online_and_quiet_probes_only_after_the_idle_interval() {
        let t0 = Instant::now();
        let mut i = inputs(
            t0 + Duration::from_secs(5),
            Reachability::Online,
            Some(true),
        );
        i.last_probe = Some(t0);
        assert_eq!(schedule().next(i), ProbeDue::At(t0 + IDLE));
        // Traffic answered later pushes the idle probe out.
        i.last_answer = Some(t0 + Duration::from_secs(4));
        assert_eq!(
            schedule().next(i),
            ProbeDue::At(t0 + Duration::from_secs(4) + IDLE)
        );
        let never = ProbeSchedule {
            idle_interval: None,
            ..schedule()
        };
        assert_eq!(never.next(i), ProbeDue::Nothing);
    }

    #[test]
    fn online_a_waiting_request_gets_a_probe_after_one_interval() {
        let t0 = Instant::now();
        let mut i = inputs(t0, Reachability::Online, Some(true));
        i.last_probe = Some(t0 - Duration::from_secs(30));
        i.last_answer = Some(t0 - Duration::from_secs(1));
        i.oldest_waiting = Some(t0);
        assert_eq!(schedule().next(i), ProbeDue::At(t0 + I));
        // A probe just started: the next one keeps the pace.
        i.last_probe = Some(t0 + Duration::from_millis(600));
        assert_eq!(
            schedule().next(i),
            ProbeDue::At(t0 + Duration::from_millis(1100))
        );
    }

    #[test]
    fn waiters_report_the_oldest_until_it_ends() {
        let t0 = Instant::now();
        let mut w = Waiters::default();
        assert_eq!(w.oldest(), None);
        let a = w.begin(t0);
        let b = w.begin(t0 + I);
        let c = w.begin(t0);
        assert_eq!(w.oldest(), Some(t0));
        w.end(a);
        assert_eq!(w.oldest(), Some(t0), "c started at the same instant");
        w.end(c);
        assert_eq!(w.oldest(), Some(t0 + I));
        w.end(b);
        w.end(b);
        assert_eq!(w.oldest(), None);
    }
}
