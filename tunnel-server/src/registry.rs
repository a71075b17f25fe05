//! Which agents are connected, and which agent answers for a destination host.
//!
//! Node names and IPs come from verified certificates (see [`crate::handshake`]);
//! lookups are exact (no fallback to "some agent"). A newer connection for a
//! node replaces the older one, and a connection's cleanup only removes its
//! own entry, so a reconnect racing a disconnect never loses the new agent.
//!
//! An IP claimed by two connected nodes (overlapping private ranges behind
//! NAT, or a certificate issued with the wrong IP) is never taken over by the
//! newer one: it becomes *ambiguous* ([`route_ip`]), a dial by that IP fails
//! with [`Lookup::Ambiguous`] naming every claimant, and routing by node name
//! keeps working. When all but one claimant leave, the IP routes again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use proto::{DialTarget, Host};
use serde::Serialize;
use transport::{TransportKind, TunnelConnection};

/// A registered agent connection.
#[derive(Debug)]
pub struct AgentEntry {
    /// Node name from the certificate.
    pub node: String,
    /// Addresses this agent answers for (a subset of its certificate's).
    pub ips: Vec<IpAddr>,
    /// Unique per connection; tells a replaced entry from its successor.
    pub conn_id: u64,
    /// Agent build version from its hello.
    pub agent_version: String,
    /// The agent process's session id, if it sent one.
    pub session: Option<String>,
    /// When the connection registered.
    pub connected_since: SystemTime,
    /// Open tunneled streams on this connection.
    pub streams: AtomicU64,
    /// The connection itself, for opening streams.
    pub link: TunnelConnection,
}

impl AgentEntry {
    /// Transport label of this connection.
    pub fn transport(&self) -> TransportKind {
        self.link.kind()
    }
}

/// An IP more than one connected node claims.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IpConflict {
    pub ip: IpAddr,
    /// Every claimant, in registration order.
    pub nodes: Vec<String>,
}

/// The answer for one IP given the nodes that claim it (registration order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpRoute<'a> {
    /// Nobody claims it.
    Unclaimed,
    /// Exactly one node: route there.
    Node(&'a str),
    /// Several nodes: refuse rather than guess.
    Ambiguous(&'a [String]),
}

/// Decides how an IP routes from its claimants (sans-IO).
pub fn route_ip(claimants: &[String]) -> IpRoute<'_> {
    match claimants {
        [] => IpRoute::Unclaimed,
        [one] => IpRoute::Node(one),
        many => IpRoute::Ambiguous(many),
    }
}

/// Why [`AgentRegistry::lookup`] found no agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No connected node answers for the host.
    NoAgent,
    /// Several connected nodes claim the IP.
    Ambiguous { ip: IpAddr, nodes: Vec<String> },
}

/// One row of `/agents`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AgentInfo {
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub transport: &'static str,
    /// RFC 3339 UTC timestamp.
    pub connected_since: String,
    pub streams: u64,
    pub agent_version: String,
    pub remote_addr: String,
    /// This node's IPs that other connected nodes claim too (not routable by IP).
    pub ip_conflicts: Vec<IpConflict>,
    /// The replica (`--server-id`) this connection is registered with.
    pub server_id: String,
}

#[cfg(test)]
impl AgentInfo {
    /// A QUIC row with only a node name and IPs, for tests of what reads rows.
    pub(crate) fn for_tests(node: &str, ips: &[&str]) -> Self {
        AgentInfo {
            node: node.into(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            transport: "quic",
            connected_since: String::new(),
            streams: 0,
            agent_version: String::new(),
            remote_addr: String::new(),
            ip_conflicts: Vec::new(),
            server_id: String::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    /// `--server-id`, shown in every row.
    server_id: String,
    by_node: HashMap<String, Arc<AgentEntry>>,
    /// Every connected node claiming each IP, in registration order.
    by_ip: HashMap<IpAddr, Vec<String>>,
}

impl Inner {
    fn claim(&mut self, node: &str, ips: &[IpAddr]) {
        for ip in ips {
            let claimants = self.by_ip.entry(*ip).or_default();
            if !claimants.iter().any(|n| n == node) {
                claimants.push(node.to_owned());
            }
        }
    }

    fn release(&mut self, node: &str, ips: &[IpAddr]) {
        for ip in ips {
            if let Some(claimants) = self.by_ip.get_mut(ip) {
                claimants.retain(|n| n != node);
                if claimants.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
    }

    /// `e`'s row in `/agents`.
    fn row(&self, e: &AgentEntry) -> AgentInfo {
        AgentInfo {
            node: e.node.clone(),
            ips: e.ips.clone(),
            transport: e.transport().as_str(),
            connected_since: rfc3339(e.connected_since),
            streams: e.streams.load(Ordering::Relaxed),
            agent_version: e.agent_version.clone(),
            remote_addr: e.link.remote_address().to_string(),
            ip_conflicts: self.conflicts_of(&e.ips),
            server_id: self.server_id.clone(),
        }
    }

    fn conflicts_of(&self, ips: &[IpAddr]) -> Vec<IpConflict> {
        ips.iter()
            .filter_map(|ip| {
                match route_ip(self.by_ip.get(ip).map(Vec::as_slice).unwrap_or_default()) {
                    IpRoute::Ambiguous(nodes) => Some(IpConflict {
                        ip: *ip,
                        nodes: nodes.to_vec(),
                    }),
                    _ => None,
                }
            })
            .collect()
    }
}

/// The set of connected agents, shared by the agent listener and every front end.
#[derive(Debug)]
pub struct AgentRegistry {
    inner: RwLock<Inner>,
    next_conn_id: AtomicU64,
    /// Bumped on every register and unregister (see [`AgentRegistry::changes`]).
    generation: tokio::sync::watch::Sender<u64>,
    /// Connections replaced by their own agent's new transport, still
    /// carrying open streams (not routed to; revocation still closes them).
    draining: std::sync::Mutex<HashMap<u64, Arc<AgentEntry>>>,
}

impl Default for AgentRegistry {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            next_conn_id: AtomicU64::default(),
            generation: tokio::sync::watch::Sender::new(0),
            draining: std::sync::Mutex::default(),
        }
    }
}

impl AgentRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry of the replica `server_id` (shown in `/agents` rows).
    pub fn with_server_id(server_id: &str) -> Self {
        let r = Self::default();
        r.write().server_id = server_id.to_owned();
        r
    }

    /// This replica's `--server-id`.
    pub fn server_id(&self) -> String {
        self.read().server_id.clone()
    }

    /// Notifies of every change to the set of agents (a counter that goes
    /// up), for state derived from it such as `--dns-hosts-file`.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Node names of the connected agents, sorted.
    pub fn nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.read().by_node.keys().cloned().collect();
        nodes.sort();
        nodes
    }

    fn changed(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds an agent; returns the entry it replaced (same node), which the
    /// caller should close. IPs another connected node already claims become
    /// ambiguous (logged), never taken over.
    pub fn register(&self, entry: Arc<AgentEntry>) -> Option<Arc<AgentEntry>> {
        let mut inner = self.write();
        let old = inner.by_node.insert(entry.node.clone(), entry.clone());
        if let Some(old) = &old {
            inner.release(&old.node, &old.ips);
        }
        inner.claim(&entry.node, &entry.ips);
        for c in inner.conflicts_of(&entry.ips) {
            tracing::warn!(ip = %c.ip, nodes = ?c.nodes, node = %entry.node,
                "several connected nodes' certificates claim this IP; it is not routed by IP \
                 until only one remains (route by node name instead)");
        }
        drop(inner);
        self.changed();
        old
    }

    /// Removes the entry of `node` if it is still connection `conn_id`.
    pub fn unregister(&self, node: &str, conn_id: u64) -> bool {
        let mut inner = self.write();
        let Some(entry) = inner.by_node.get(node).cloned() else {
            return false;
        };
        if entry.conn_id != conn_id {
            return false;
        }
        inner.by_node.remove(node);
        inner.release(node, &entry.ips);
        drop(inner);
        self.changed();
        true
    }

    /// The agent that answers for `target`'s host, by exact node name or IP.
    pub fn lookup(&self, target: &DialTarget) -> Result<Arc<AgentEntry>, Lookup> {
        let inner = self.read();
        let node = match &target.host {
            Host::Ip(ip) => {
                match route_ip(inner.by_ip.get(ip).map(Vec::as_slice).unwrap_or_default()) {
                    IpRoute::Unclaimed => return Err(Lookup::NoAgent),
                    IpRoute::Node(node) => node,
                    IpRoute::Ambiguous(nodes) => {
                        return Err(Lookup::Ambiguous {
                            ip: *ip,
                            nodes: nodes.to_vec(),
                        })
                    }
                }
            }
            Host::Name(name) => name.as_str(),
        };
        inner.by_node.get(node).cloned().ok_or(Lookup::NoAgent)
    }

    /// Every IP more than one connected node claims, sorted by IP.
    pub fn conflicts(&self) -> Vec<IpConflict> {
        let inner = self.read();
        let mut ips: Vec<IpAddr> = inner.by_ip.keys().copied().collect();
        ips.sort();
        inner.conflicts_of(&ips)
    }

    /// The agent of `node`, by exact node name (`--forward` names the node).
    pub fn get(&self, node: &str) -> Option<Arc<AgentEntry>> {
        self.read().by_node.get(node).cloned()
    }

    /// Every registered connection.
    pub fn entries(&self) -> Vec<Arc<AgentEntry>> {
        self.read().by_node.values().cloned().collect()
    }

    /// Keeps `entry` (replaced, finishing its streams) for [`Self::all_connections`].
    pub fn start_draining(&self, entry: Arc<AgentEntry>) {
        self.draining_map().insert(entry.conn_id, entry);
    }

    /// The draining connection `conn_id` has closed.
    pub fn finish_draining(&self, conn_id: u64) {
        self.draining_map().remove(&conn_id);
    }

    /// Registered and draining connections: everything revocation must close.
    pub fn all_connections(&self) -> Vec<Arc<AgentEntry>> {
        let mut all = self.entries();
        all.extend(self.draining_map().values().cloned());
        all
    }

    fn draining_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<AgentEntry>>> {
        self.draining.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of connected agents per transport.
    pub fn count_by_transport(&self) -> HashMap<TransportKind, usize> {
        let mut m = HashMap::new();
        for e in self.read().by_node.values() {
            *m.entry(e.transport()).or_insert(0) += 1;
        }
        m
    }

    /// Number of connected agents.
    pub fn len(&self) -> usize {
        self.read().by_node.len()
    }

    /// True when no agent is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows for `/agents`, sorted by node name.
    pub fn snapshot(&self) -> Vec<AgentInfo> {
        let inner = self.read();
        let mut rows: Vec<AgentInfo> = inner.by_node.values().map(|e| inner.row(e)).collect();
        rows.sort_by(|a, b| a.node.cmp(&b.node));
        rows
    }

    /// The `/agents` row of one node, if it is connected.
    pub fn info(&self, node: &str) -> Option<AgentInfo> {
        let inner = self.read();
        inner.by_node.get(node).map(|e| inner.row(e))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // (every update is a few inserts), so recover from poisoning.
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn rfc3339(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    dt.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_claimant_routes_and_several_are_ambiguous() {
        assert_eq!(route_ip(&[]), IpRoute::Unclaimed);
        let one = names(&["edge-1"]);
        assert_eq!(route_ip(&one), IpRoute::Node("edge-1"));
        let two = names(&["edge-1", "edge-3"]);
        assert_eq!(route_ip(&two), IpRoute::Ambiguous(&two[..]));
    }

    #[test]
    fn claims_are_shared_released_and_never_taken_over() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.3".parse().unwrap();
        let mut inner = Inner::default();
        inner.claim("edge-1", &[ip]);
        inner.claim("edge-3", &[ip, other]);
        // A reconnect of edge-1 claims again without duplicating itself.
        inner.claim("edge-1", &[ip]);
        assert_eq!(
            inner.conflicts_of(&[ip, other]),
            vec![IpConflict {
                ip,
                nodes: names(&["edge-1", "edge-3"])
            }]
        );
        inner.release("edge-1", &[ip]);
        assert!(inner.conflicts_of(&[ip]).is_empty());
        assert_eq!(inner.by_ip[&ip], names(&["edge-3"]));
        inner.release("edge-3", &[ip, other]);
        assert!(inner.by_ip.is_empty());
    }
}
