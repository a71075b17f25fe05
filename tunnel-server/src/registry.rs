//! Which agents are connected, and which agent answers for a destination host.
//!
//! Node names and IPs come from verified certificates (see [`crate::handshake`]);
//! lookups are exact (no fallback to "some agent"). A newer connection for a
//! node replaces the older one, and a connection's cleanup only removes its
//! own entry, so a reconnect racing a disconnect never loses the new agent.

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
}

#[derive(Debug, Default)]
struct Inner {
    by_node: HashMap<String, Arc<AgentEntry>>,
    by_ip: HashMap<IpAddr, String>,
}

/// The set of connected agents, shared by the agent listener and every front end.
#[derive(Debug)]
pub struct AgentRegistry {
    inner: RwLock<Inner>,
    next_conn_id: AtomicU64,
    /// Bumped on every register and unregister (see [`AgentRegistry::changes`]).
    generation: tokio::sync::watch::Sender<u64>,
}

impl Default for AgentRegistry {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            next_conn_id: AtomicU64::default(),
            generation: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl AgentRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
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
    /// caller should close.
    pub fn register(&self, entry: Arc<AgentEntry>) -> Option<Arc<AgentEntry>> {
        let mut inner = self.write();
        let old = inner.by_node.insert(entry.node.clone(), entry.clone());
        if let Some(old) = &old {
            for ip in &old.ips {
                if inner.by_ip.get(ip) == Some(&old.node) {
                    inner.by_ip.remove(ip);
                }
            }
        }
        for ip in &entry.ips {
            if let Some(prev) = inner.by_ip.insert(*ip, entry.node.clone()) {
                if prev != entry.node {
                    tracing::warn!(ip = %ip, previous = %prev, node = %entry.node,
                        "two nodes' certificates claim the same IP; the newest registration answers for it");
                }
            }
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
        for ip in &entry.ips {
            if inner.by_ip.get(ip).map(String::as_str) == Some(node) {
                inner.by_ip.remove(ip);
            }
        }
        // An IP another node also claims goes back to that node.
        let others: Vec<(IpAddr, String)> = inner
            .by_node
            .values()
            .flat_map(|e| e.ips.iter().map(|ip| (*ip, e.node.clone())))
            .filter(|(ip, _)| entry.ips.contains(ip))
            .collect();
        for (ip, n) in others {
            inner.by_ip.entry(ip).or_insert(n);
        }
        drop(inner);
        self.changed();
        true
    }

    /// The agent that answers for `target`'s host, by exact node name or IP.
    pub fn lookup(&self, target: &DialTarget) -> Option<Arc<AgentEntry>> {
        let inner = self.read();
        match &target.host {
            Host::Ip(ip) => inner
                .by_ip
                .get(ip)
                .and_then(|node| inner.by_node.get(node))
                .cloned(),
            Host::Name(name) => inner.by_node.get(name).cloned(),
        }
    }

    /// The agent of `node`, by exact node name (`--forward` names the node).
    pub fn get(&self, node: &str) -> Option<Arc<AgentEntry>> {
        self.read().by_node.get(node).cloned()
    }

    /// Every registered connection (e.g. to close the revoked ones).
    pub fn entries(&self) -> Vec<Arc<AgentEntry>> {
        self.read().by_node.values().cloned().collect()
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
        let mut rows: Vec<AgentInfo> = self
            .read()
            .by_node
            .values()
            .map(|e| AgentInfo {
                node: e.node.clone(),
                ips: e.ips.clone(),
                transport: e.transport().as_str(),
                connected_since: rfc3339(e.connected_since),
                streams: e.streams.load(Ordering::Relaxed),
                agent_version: e.agent_version.clone(),
                remote_addr: e.link.remote_address().to_string(),
            })
            .collect();
        rows.sort_by(|a, b| a.node.cmp(&b.node));
        rows
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
