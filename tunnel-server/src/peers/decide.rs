//! The peer path's decisions, without I/O: which peer addresses count,
//! which peer a destination was last found at, and how a dial failure
//! crosses from one replica to another with its status intact.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proto::DialTarget;

use super::wire::Answer;
use crate::dial::DialFailure;

/// Most destinations remembered; beyond, the cache starts over (a bound, not an LRU).
const MAX_ENTRIES: usize = 10_000;

/// The cache key of a destination: the node it is routed to by name, or
/// the target's host.
pub fn route_key(node: Option<&str>, target: &DialTarget) -> String {
    match node {
        Some(n) => format!("node/{n}"),
        None => format!("host/{}", target.host_string()),
    }
}

/// Whether `peer` is this replica itself: the agent port, at an address of
/// this host (`is_local`) or the exact `--agent-addr`.
pub fn is_own(peer: SocketAddr, agent_addr: SocketAddr, is_local: impl Fn(IpAddr) -> bool) -> bool {
    peer.port() == agent_addr.port()
        && (peer.ip() == agent_addr.ip()
            || (agent_addr.ip().is_unspecified() && is_local(peer.ip())))
}

/// Which peer had each destination, for a short while: repeated dials to a
/// node skip the lookup round.
#[derive(Debug)]
pub struct RouteCache {
    ttl: Duration,
    entries: HashMap<String, (SocketAddr, Instant)>,
}

impl RouteCache {
    /// A cache whose answers are trusted for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: HashMap::new(),
        }
    }

    /// The peer that had `key` less than the ttl ago.
    pub fn get(&mut self, key: &str, now: Instant) -> Option<SocketAddr> {
        match self.entries.get(key) {
            Some((peer, at)) if now.saturating_duration_since(*at) < self.ttl => Some(*peer),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// `peer` has `key` now.
    pub fn put(&mut self, key: String, peer: SocketAddr, now: Instant) {
        if self.entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= MAX_ENTRIES {
                self.entries.clear();
            }
        }
        self.entries.insert(key, (peer, now));
    }

    /// `peer` no longer has `key` (it answered so, or failed).
    pub fn forget(&mut self, key: &str, peer: SocketAddr) {
        if self.entries.get(key).is_some_and(|(p, _)| *p == peer) {
            self.entries.remove(key);
        }
    }

    /// Number of remembered destinations.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Status of a positive answer.
pub const FOUND: u16 = 200;

/// Who answers: `--server-id` and the per-process instance number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub server_id: String,
    pub instance: u64,
}

/// A number unlikely to repeat between processes: the process id and the
/// start time's nanoseconds, mixed.
pub fn instance_number() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos.rotate_left(17) ^ u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The answer `me` gives for its own dial result.
pub fn answer_for(me: &Replica, result: Result<(), &DialFailure>) -> Answer {
    match result {
        Ok(()) => Answer {
            server_id: me.server_id.clone(),
            instance: me.instance,
            status: FOUND,
            label: "ok".into(),
            message: String::new(),
        },
        Err(e) => Answer {
            server_id: me.server_id.clone(),
            instance: me.instance,
            status: e.http_status(),
            label: e.result_label().into(),
            message: e.to_string(),
        },
    }
}

/// The failure a peer's negative answer stands for (same status, label and
/// message as the peer's local dial), or `None` when it succeeded.
pub fn failure_of(answer: &Answer) -> Option<DialFailure> {
    (answer.status != FOUND).then(|| DialFailure::Peer {
        server_id: answer.server_id.clone(),
        status: answer.status,
        label: known_label(&answer.label),
        message: answer.message.clone(),
    })
}

/// Whether a negative answer only means "not connected here" (try another peer).
pub fn is_not_here(answer: &Answer) -> bool {
    answer.status != FOUND && answer.label == "no_agent"
}

/// The peer's label if it is one of ours (labels stay a closed set).
fn known_label(label: &str) -> &'static str {
    const LABELS: [&str; 7] = [
        "no_agent",
        "ambiguous",
        "limit",
        "not_allowed",
        "dial_failed",
        "timeout",
        "agent_gone",
    ];
    LABELS
        .into_iter()
        .find(|l| *l == label)
        .unwrap_or("peer_failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn own_address_is_skipped() {
        let local = |ip: IpAddr| ip == "10.0.0.1".parse::<IpAddr>().unwrap();
        let any = addr("0.0.0.0:8132");
        assert!(is_own(addr("10.0.0.1:8132"), any, local));
        assert!(!is_own(addr("10.0.0.2:8132"), any, local));
        assert!(!is_own(addr("10.0.0.1:9132"), any, local));
        let exact = addr("127.0.0.1:8132");
        assert!(is_own(addr("127.0.0.1:8132"), exact, |_| true));
        // Replicas on one host, each on its own port.
        assert!(!is_own(addr("127.0.0.1:8133"), exact, |_| true));
    }

    #[test]
    fn cached_routes_expire_and_are_forgotten_per_peer() {
        let mut c = RouteCache::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let (a, b) = (addr("10.0.0.1:8132"), addr("10.0.0.2:8132"));
        c.put("node/edge-1".into(), a, t0);
        assert_eq!(c.get("node/edge-1", t0 + Duration::from_secs(4)), Some(a));
        c.forget("node/edge-1", b);
        assert_eq!(
            c.get("node/edge-1", t0),
            Some(a),
            "another peer's failure keeps it"
        );
        c.forget("node/edge-1", a);
        assert_eq!(c.get("node/edge-1", t0), None);
        c.put("node/edge-1".into(), a, t0);
        assert_eq!(c.get("node/edge-1", t0 + Duration::from_secs(5)), None);
        assert!(c.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut c = RouteCache::new(Duration::from_secs(5));
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES + 10 {
            c.put(format!("node/n{i}"), addr("10.0.0.1:8132"), t0);
        }
        assert!(c.len() <= MAX_ENTRIES);
    }

    fn me() -> Replica {
        Replica {
            server_id: "b".into(),
            instance: 7,
        }
    }

    #[test]
    fn failures_cross_with_their_status() {
        let e = DialFailure::NotAllowed {
            node: "edge-1".into(),
            target: "10.0.0.1:22".into(),
            message: "not in the allowlist".into(),
        };
        let a = answer_for(&me(), Err(&e));
        assert_eq!((a.status, a.label.as_str()), (403, "not_allowed"));
        let back = failure_of(&a).unwrap();
        assert_eq!(back.http_status(), 403);
        assert_eq!(back.result_label(), "not_allowed");
        assert!(back.to_string().contains("not in the allowlist"), "{back}");
        assert!(failure_of(&answer_for(&me(), Ok(()))).is_none());
        let gone = answer_for(
            &me(),
            Err(&DialFailure::NoAgent {
                host: "edge-9".into(),
            }),
        );
        assert!(is_not_here(&gone));
        assert!(!is_not_here(&a));
        let odd = Answer {
            label: "made-up".into(),
            ..a
        };
        assert_eq!(failure_of(&odd).unwrap().result_label(), "peer_failed");
    }

    #[test]
    fn keys_tell_node_routes_from_host_routes() {
        let t: DialTarget = "edge-1:10250".parse().unwrap();
        assert_eq!(route_key(None, &t), "host/edge-1");
        assert_eq!(route_key(Some("edge-1"), &t), "node/edge-1");
    }
}
