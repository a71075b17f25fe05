//! Upstream reachability with hysteresis, as a sans-IO state machine.
//!
//! Going offline is fast (one failed probe, or one transport error or
//! timeout on real traffic): clients must not wait for the cloud. Coming back
//! is slow on purpose: several consecutive successful probes spanning at
//! least `online_after`, so a flapping 40 KB/s link does not make clients
//! re-list every few seconds (the incumbent's issue #1462).

use std::time::{Duration, Instant};

/// Whether requests go upstream or are answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reachability {
    /// No probe has finished yet: requests go upstream (a failure answers from cache).
    Starting,
    /// The apiserver answers: requests go upstream.
    Online,
    /// The apiserver does not answer: requests are answered from the cache.
    Offline,
}

impl Reachability {
    /// True when requests should be sent upstream.
    pub fn forwards(self) -> bool {
        self != Reachability::Offline
    }
}

/// A change of [`Reachability`] with the reason, for the log line and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub to: Reachability,
    pub reason: String,
}

/// Thresholds of the hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive successful probes needed to go online again.
    pub successes_to_online: u32,
    /// ...and the time they must span, first to last.
    pub online_after: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            successes_to_online: 3,
            online_after: Duration::from_secs(2),
        }
    }
}

/// The state machine: feed it probe results and traffic errors, act on the switches.
#[derive(Debug, Clone)]
pub struct Health {
    policy: HealthPolicy,
    state: Reachability,
    /// While offline: when the current run of successes started, and its length.
    streak: Option<(Instant, u32)>,
}

impl Health {
    /// A machine in [`Reachability::Starting`].
    pub fn new(policy: HealthPolicy) -> Self {
        Self {
            policy,
            state: Reachability::Starting,
            streak: None,
        }
    }

    /// The current state.
    pub fn state(&self) -> Reachability {
        self.state
    }

    /// A probe got an answer at `now`.
    pub fn probe_succeeded(&mut self, now: Instant) -> Option<Switch> {
        match self.state {
            Reachability::Online => None,
            Reachability::Starting => self.switch(Reachability::Online, "first probe answered"),
            Reachability::Offline => {
                let (start, n) = match self.streak {
                    Some((start, n)) => (start, n + 1),
                    None => (now, 1),
                };
                self.streak = Some((start, n));
                let span = now.saturating_duration_since(start);
                if n >= self.policy.successes_to_online && span >= self.policy.online_after {
                    let reason = format!("{n} consecutive probes answered over {span:?}");
                    self.switch(Reachability::Online, &reason)
                } else {
                    None
                }
            }
        }
    }

    /// A probe failed (error or timeout); `reason` says which.
    pub fn probe_failed(&mut self, reason: &str) -> Option<Switch> {
        self.streak = None;
        self.switch(Reachability::Offline, &format!("probe failed: {reason}"))
    }

    /// A proxied request failed at the transport level (connect error, reset, timeout).
    pub fn traffic_failed(&mut self, reason: &str) -> Option<Switch> {
        self.streak = None;
        self.switch(
            Reachability::Offline,
            &format!("upstream request failed: {reason}"),
        )
    }

    fn switch(&mut self, to: Reachability, reason: &str) -> Option<Switch> {
        if self.state == to {
            return None;
        }
        self.state = to;
        self.streak = None;
        Some(Switch {
            to,
            reason: reason.to_string(),
        })
    }
}

/// Why the node proxy is offline, as a small fixed set (a metric label and the
/// `/readyz` text); the full error goes to the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OfflineReason {
    /// `--apiserver tunnel` while the agent has no server connection.
    TunnelNotConnected,
    /// The connection was refused (nothing listens, or the server's `--apiserver` refused).
    ConnectionRefused,
    /// No connection or no answer in time.
    Timeout,
    /// Other errors reaching the apiserver (DNS, unreachable network, reset).
    ConnectFailed,
    /// The apiserver's certificate does not name `--hub-apiserver-server-name`.
    CertificateNameMismatch,
    /// The apiserver's certificate is not signed by `--hub-apiserver-ca`, expired...
    CertificateUntrusted,
    /// The TLS handshake failed for another reason (our client certificate refused...).
    TlsFailed,
    /// The apiserver answered the probe with a 5xx.
    ServerError,
    /// The HTTP exchange failed (connection closed mid-answer, bad response).
    HttpFailed,
}

impl OfflineReason {
    /// Every reason, for exporting one gauge per label value.
    pub const ALL: [OfflineReason; 9] = [
        OfflineReason::TunnelNotConnected,
        OfflineReason::ConnectionRefused,
        OfflineReason::Timeout,
        OfflineReason::ConnectFailed,
        OfflineReason::CertificateNameMismatch,
        OfflineReason::CertificateUntrusted,
        OfflineReason::TlsFailed,
        OfflineReason::ServerError,
        OfflineReason::HttpFailed,
    ];

    /// The metric label and `/readyz` text.
    pub fn label(self) -> &'static str {
        match self {
            OfflineReason::TunnelNotConnected => "not connected to the tunnel server",
            OfflineReason::ConnectionRefused => "apiserver connection refused",
            OfflineReason::Timeout => "apiserver timeout",
            OfflineReason::ConnectFailed => "apiserver unreachable",
            OfflineReason::CertificateNameMismatch => "apiserver certificate name mismatch",
            OfflineReason::CertificateUntrusted => "apiserver certificate not trusted",
            OfflineReason::TlsFailed => "TLS handshake failed",
            OfflineReason::ServerError => "apiserver answered 5xx",
            OfflineReason::HttpFailed => "HTTP exchange failed",
        }
    }

    /// The reason for a dial error's kind.
    pub fn of_dial(kind: std::io::ErrorKind) -> Self {
        use std::io::ErrorKind;
        match kind {
            ErrorKind::NotConnected => OfflineReason::TunnelNotConnected,
            ErrorKind::ConnectionRefused => OfflineReason::ConnectionRefused,
            ErrorKind::TimedOut => OfflineReason::Timeout,
            _ => OfflineReason::ConnectFailed,
        }
    }

    /// The reason for a failed TLS handshake, from rustls' error when there is one.
    pub fn of_tls(err: Option<&rustls::Error>) -> Self {
        use rustls::CertificateError;
        match err {
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => OfflineReason::CertificateNameMismatch,
            Some(rustls::Error::InvalidCertificate(_)) => OfflineReason::CertificateUntrusted,
            _ => OfflineReason::TlsFailed,
        }
    }
}

/// Rate limit of the "still offline" log line: a changed reason is logged at
/// once, the same one at most once per `every`.
#[derive(Debug, Clone)]
pub struct ReasonLog {
    every: Duration,
    last: Option<(OfflineReason, Instant)>,
}

impl ReasonLog {
    /// Nothing logged yet.
    pub fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// Whether to log `reason` now (and if so, remembers it as logged).
    pub fn should_log(&mut self, reason: OfflineReason, now: Instant) -> bool {
        let due = match self.last {
            Some((last, at)) => last != reason || now.saturating_duration_since(at) >= self.every,
            None => true,
        };
        if due {
            self.last = Some((reason, now));
        }
        due
    }

    /// Back online: the next offline reason is news again.
    pub fn clear(&mut self) {
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_come_from_the_error_kinds() {
        use std::io::ErrorKind;
        assert_eq!(
            OfflineReason::of_dial(ErrorKind::NotConnected),
            OfflineReason::TunnelNotConnected
        );
        assert_eq!(
            OfflineReason::of_dial(ErrorKind::ConnectionRefused),
            OfflineReason::ConnectionRefused
        );
        assert_eq!(
            OfflineReason::of_dial(ErrorKind::HostUnreachable),
            OfflineReason::ConnectFailed
        );
        let name = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName);
        assert_eq!(
            OfflineReason::of_tls(Some(&name)),
            OfflineReason::CertificateNameMismatch
        );
        let issuer = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(
            OfflineReason::of_tls(Some(&issuer)),
            OfflineReason::CertificateUntrusted
        );
        assert_eq!(OfflineReason::of_tls(None), OfflineReason::TlsFailed);
    }

    #[test]
    fn a_changed_reason_is_logged_at_once_the_same_one_once_per_period() {
        let mut log = ReasonLog::new(Duration::from_secs(60));
        let t = Instant::now();
        let tunnel = OfflineReason::TunnelNotConnected;
        let name = OfflineReason::CertificateNameMismatch;
        assert!(log.should_log(tunnel, t));
        assert!(!log.should_log(tunnel, t + Duration::from_secs(1)));
        assert!(log.should_log(name, t + Duration::from_secs(2)), "changed");
        assert!(!log.should_log(name, t + Duration::from_secs(61)));
        assert!(
            log.should_log(name, t + Duration::from_secs(62)),
            "period over"
        );
        assert!(
            log.should_log(tunnel, t + Duration::from_secs(63)),
            "changed back"
        );
        log.clear();
        assert!(
            log.should_log(tunnel, t + Duration::from_secs(64)),
            "after online"
        );
    }

    fn machine() -> (Health, Instant) {
        (Health::new(HealthPolicy::default()), Instant::now())
    }

    #[test]
    fn first_probe_decides_the_starting_state() {
        let (mut h, t) = machine();
        assert!(h.state().forwards());
        assert_eq!(h.probe_succeeded(t).unwrap().to, Reachability::Online);
        let (mut h, _) = machine();
        let s = h.probe_failed("timeout after 1.5s").unwrap();
        assert_eq!(s.to, Reachability::Offline);
        assert!(s.reason.contains("timeout after 1.5s"));
        assert!(!h.state().forwards());
    }

    #[test]
    fn one_failure_or_traffic_error_goes_offline() {
        let (mut h, t) = machine();
        h.probe_succeeded(t);
        assert_eq!(h.probe_failed("x").unwrap().to, Reachability::Offline);
        assert_eq!(h.probe_failed("again"), None, "no repeated switch");
        let (mut h, t) = machine();
        h.probe_succeeded(t);
        let s = h.traffic_failed("connection reset").unwrap();
        assert!(s.reason.contains("connection reset"));
    }

    #[test]
    fn online_needs_enough_successes_spanning_enough_time() {
        let (mut h, t) = machine();
        h.probe_failed("x");
        // Three quick successes are not enough: they span < 2 s.
        for ms in [0, 100, 200, 300] {
            assert_eq!(h.probe_succeeded(t + Duration::from_millis(ms)), None);
        }
        let s = h.probe_succeeded(t + Duration::from_millis(2000)).unwrap();
        assert_eq!(s.to, Reachability::Online);
        assert!(s.reason.contains("5 consecutive"), "{}", s.reason);
    }

    #[test]
    fn a_failure_restarts_the_streak() {
        let (mut h, t) = machine();
        h.probe_failed("x");
        h.probe_succeeded(t);
        h.probe_succeeded(t + Duration::from_secs(1));
        h.probe_failed("flap");
        // The streak before the failure does not count: 2 s, 3 s, then 4 s completes a new one.
        assert_eq!(h.probe_succeeded(t + Duration::from_secs(2)), None);
        assert_eq!(h.probe_succeeded(t + Duration::from_secs(3)), None);
        assert!(h.probe_succeeded(t + Duration::from_secs(4)).is_some());
        assert_eq!(h.state(), Reachability::Online);
    }

    #[test]
    fn enough_time_but_too_few_successes_stays_offline() {
        let (mut h, t) = machine();
        h.probe_failed("x");
        assert_eq!(h.probe_succeeded(t), None);
        assert_eq!(h.probe_succeeded(t + Duration::from_secs(10)), None);
        assert!(h.probe_succeeded(t + Duration::from_secs(11)).is_some());
    }
}
