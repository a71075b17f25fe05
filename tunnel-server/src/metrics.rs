//! The server's Prometheus metrics, names as the spec fixes them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::registry::AgentRegistry;

/// Every metric the server exports, registered in its own registry.
#[derive(Clone)]
pub struct ServerMetrics {
    registry: Registry,
    pub agents_connected: IntGaugeVec,
    pub streams_active: IntGaugeVec,
    pub streams_total: IntCounterVec,
    pub dial_duration: HistogramVec,
    pub bytes_total: IntCounterVec,
    pub frontend_requests: IntCounterVec,
    pub agent_rejections: IntCounterVec,
    /// `notAfter` of the server's own certificate (Unix seconds).
    pub certificate_expiry: IntGauge,
    /// `notAfter` of each connected agent's certificate, or of the one last issued to it.
    pub agent_certificate_expiry: IntGaugeVec,
    /// Enrollment and renewal requests, by kind and result.
    pub enrollments: IntCounterVec,
    /// Bytes by node and direction (only with per-node metrics on).
    pub node_bytes: IntCounterVec,
    /// Streams opened, by node (only with per-node metrics on).
    pub node_streams_total: IntCounterVec,
    /// Streams open now, by node (only with per-node metrics on).
    pub node_streams_active: IntGaugeVec,
    /// Edge→cloud streams agents opened, open now, by service (e.g. `apiserver`).
    pub service_streams_active: IntGaugeVec,
    /// Edge→cloud streams agents opened, by service and result.
    pub service_streams_total: IntCounterVec,
    /// Bytes gRPC calls hold in partially received messages (refreshed at scrape).
    pub grpc_buffered_bytes: IntGauge,
    /// SNI and transparent connections closed before any dial, by front end and reason.
    pub passthrough_refused: IntCounterVec,
    /// TLS front-end clients refused, by reason (agent_certificate, revoked, ...).
    pub frontend_refusals: IntCounterVec,
    /// IPs that more than one connected node claims now (routed by name only).
    pub ip_conflicts: IntGauge,
    /// Connections closed at once because a listener was at its connection cap.
    pub connections_refused: IntCounterVec,
    /// Tunneled streams closed after no byte moved for `--stream-idle-timeout`.
    pub idle_timeouts: IntCounterVec,
    /// Connected nodes left without per-node series by `--per-node-metrics-max-nodes`.
    pub per_node_omitted: IntGauge,
    /// Agent connections refused at once because `--max-pending-handshakes` were in progress.
    pub handshakes_refused: IntCounterVec,
    /// 1, labelled with this replica's `--server-id` and version.
    pub info: IntGaugeVec,
    /// Agents connected to this replica, labelled with its `--server-id`
    /// (sum over replicas' series to see the fleet per replica).
    pub replica_agents: IntGaugeVec,
    /// Front-end dials carried through a peer replica, by peer and result.
    pub peer_dials: IntCounterVec,
    /// Peers that could not be asked or failed mid-dial, by peer and reason.
    pub peer_failures: IntCounterVec,
    /// Whether the `node` label is used; off for fleets too large for one
    /// series per node (`--per-node-metrics=false`).
    per_node: bool,
    /// The nodes that have per-node series, at most `--per-node-metrics-max-nodes`.
    tracked: Arc<Mutex<TrackedNodes>>,
}

/// Which nodes get `node`-labelled series: the first `max` to need one, a
/// slot freed when its node disconnects.
#[derive(Debug, Default)]
struct TrackedNodes {
    max: usize,
    nodes: HashSet<String>,
    omitted: HashSet<String>,
}

impl TrackedNodes {
    /// Whether `node` has (or now gets) series.
    fn admit(&mut self, node: &str) -> bool {
        if self.nodes.contains(node) {
            return true;
        }
        if self.nodes.len() < self.max {
            self.omitted.remove(node);
            self.nodes.insert(node.to_string());
            return true;
        }
        if !self.omitted.contains(node) {
            self.omitted.insert(node.to_string());
        }
        false
    }

    fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
        self.omitted.remove(node);
    }
}

/// Directions of the byte counters, as label values.
const DIRECTIONS: [&str; 2] = ["to_edge", "from_edge"];

/// Builds a metric and registers it, or fails with prometheus' error.
macro_rules! registered {
    ($reg:expr, $metric:expr) => {{
        let m = $metric?;
        $reg.register(Box::new(m.clone()))?;
        m
    }};
}

impl ServerMetrics {
    /// Creates and registers all metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        Ok(Self {
            agents_connected: registered!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tunnel_server_agents_connected",
                        "Agents connected, by transport."
                    ),
                    &["transport"]
                )
            ),
            streams_active: registered!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tunnel_server_streams_active",
                        "Tunneled streams open now, by front end."
                    ),
                    &["frontend"]
                )
            ),
            streams_total: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_streams_total",
                        "Tunneled stream attempts, by front end and result."
                    ),
                    &["frontend", "result"]
                )
            ),
            dial_duration: registered!(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "tunnel_server_dial_duration_seconds",
                        "Time from a front-end request to the agent's dial result."
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0
                    ]),
                    &["result"]
                )
            ),
            bytes_total: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_bytes_total",
                        "Bytes carried through tunnels; direction to_edge or from_edge."
                    ),
                    &["direction"]
                )
            ),
            frontend_requests: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_frontend_requests_total",
                        "Front-end requests answered, by protocol and HTTP status code."
                    ),
                    &["protocol", "code"]
                )
            ),
            agent_rejections: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_agent_rejections_total",
                        "Agent connections refused, by reason."
                    ),
                    &["reason"]
                )
            ),
            certificate_expiry: registered!(
                r,
                IntGauge::new(
                    "tunnel_server_certificate_expiry_timestamp_seconds",
                    "Expiry (notAfter) of the server's certificate, Unix seconds."
                )
            ),
            agent_certificate_expiry: registered!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tunnel_server_agent_certificate_expiry_timestamp_seconds",
                        "Expiry (notAfter) of each agent's certificate, Unix seconds."
                    ),
                    &["node"]
                )
            ),
            enrollments: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_certificate_requests_total",
                        "Enrollment and renewal requests, by kind (enroll, renew) and result."
                    ),
                    &["kind", "result"]
                )
            ),
            node_bytes: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_node_bytes_total",
                        "Bytes carried through tunnels, by node and direction (to_edge, from_edge)."
                    ),
                    &["node", "direction"]
                )
            ),
            node_streams_total: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_node_streams_total",
                        "Tunneled streams opened, by node."
                    ),
                    &["node"]
                )
            ),
            node_streams_active: registered!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tunnel_server_node_streams_active",
                        "Tunneled streams open now, by node."
                    ),
                    &["node"]
                )
            ),
            service_streams_active: registered!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tunnel_server_service_streams_active",
                        "Streams agents opened towards cloud services, open now, by service."
                    ),
                    &["service"]
                )
            ),
            service_streams_total: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_service_streams_total",
                        "Streams agents opened towards cloud services, by service and result."
                    ),
                    &["service", "result"]
                )
            ),
            grpc_buffered_bytes: registered!(
                r,
                IntGauge::new(
                    "tunnel_server_grpc_buffered_bytes",
                    "Bytes gRPC calls hold in partially received messages (bounded by a 64 MiB budget)."
                )
            ),
            passthrough_refused: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_passthrough_refused_total",
                        "SNI and transparent connections closed before a dial (no server name, not TLS, timeout, ...), by front end and reason."
                    ),
                    &["frontend", "reason"]
                )
            ),
            frontend_refusals: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_frontend_refusals_total",
                        "TLS front-end clients refused (403), by reason."
                    ),
                    &["reason"]
                )
            ),
            ip_conflicts: registered!(
                r,
                IntGauge::new(
                    "tunnel_server_ip_conflicts",
                    "IPs claimed by more than one connected node (CONNECT to them: 409)."
                )
            ),
            connections_refused: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_connections_refused_total",
                        "Connections refused because a listener was at its connection cap."
                    ),
                    &["listener"]
                )
            ),
            idle_timeouts: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_stream_idle_timeouts_total",
                        "Tunneled streams closed for idleness, by front end."
                    ),
                    &["frontend"]
                )
            ),
            handshakes_refused: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_handshakes_refused_total",
                        "Agent connections refused at once because --max-pending-handshakes were in progress, by transport."
                    ),
                    &["transport"]
                )
            ),
            info: registered!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tunnel_server_info",
                        "1, labelled with this replica's --server-id and version."
                    ),
                    &["server_id", "version"]
                )
            ),
            replica_agents: registered!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "tunnel_server_replica_agents",
                        "Agents connected to this replica, by --server-id."
                    ),
                    &["server_id"]
                )
            ),
            peer_dials: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_peer_dials_total",
                        "Front-end dials carried through a peer replica, by peer address and result."
                    ),
                    &["peer", "result"]
                )
            ),
            peer_failures: registered!(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tunnel_server_peer_failures_total",
                        "Peer replicas that could not be asked or broke a dial, by peer address and reason."
                    ),
                    &["peer", "reason"]
                )
            ),
            per_node_omitted: registered!(
                r,
                IntGauge::new(
                    "tunnel_server_per_node_metrics_omitted_nodes",
                    "Connected nodes without node-labelled series (--per-node-metrics-max-nodes reached)."
                )
            ),
            registry: r,
            per_node: true,
            tracked: Arc::new(Mutex::new(TrackedNodes {
                max: usize::MAX,
                ..Default::default()
            })),
        })
    }

    /// The registry `/metrics` renders, for metrics defined elsewhere (the controllers').
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Turns the per-node series on or off (on by default) and bounds how
    /// many nodes have them at once.
    pub fn with_per_node(mut self, on: bool, max_nodes: usize) -> Self {
        self.per_node = on;
        self.lock_tracked().max = max_nodes;
        self
    }

    fn lock_tracked(&self) -> std::sync::MutexGuard<'_, TrackedNodes> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `node` gets per-node series (on, and within the node bound).
    fn per_node_for(&self, node: &str) -> bool {
        if !self.per_node {
            return false;
        }
        let mut t = self.lock_tracked();
        let admitted = t.admit(node);
        self.per_node_omitted.set(t.omitted.len() as i64);
        admitted
    }

    /// Records when `node`'s certificate expires (Unix seconds), when
    /// per-node metrics are on; with them off the expiry warning log remains.
    pub fn set_agent_certificate_expiry(&self, node: &str, not_after: i64) {
        if self.per_node_for(node) {
            self.agent_certificate_expiry
                .with_label_values(&[node])
                .set(not_after);
        }
    }

    /// Records a newly opened stream of `node`; returns its active gauge
    /// (to decrement when the stream ends) when per-node metrics are on.
    pub fn node_stream_opened(&self, node: &str) -> Option<IntGauge> {
        if !self.per_node_for(node) {
            return None;
        }
        self.node_streams_total.with_label_values(&[node]).inc();
        let g = self.node_streams_active.with_label_values(&[node]);
        g.inc();
        Some(g)
    }

    /// The (to_edge, from_edge) byte counters of `node`, when per-node metrics are on.
    pub fn node_byte_counters(&self, node: &str) -> Option<(IntCounter, IntCounter)> {
        self.per_node_for(node).then(|| {
            (
                self.node_bytes.with_label_values(&[node, DIRECTIONS[0]]),
                self.node_bytes.with_label_values(&[node, DIRECTIONS[1]]),
            )
        })
    }

    /// Drops every series of `node` once it disconnected, so a fleet's churn
    /// does not grow the exposition forever. Streams still finishing update
    /// detached series that are no longer exported.
    pub fn forget_node(&self, node: &str) {
        for d in DIRECTIONS {
            let _ = self.node_bytes.remove_label_values(&[node, d]);
        }
        let _ = self.node_streams_total.remove_label_values(&[node]);
        let _ = self.node_streams_active.remove_label_values(&[node]);
        let _ = self.agent_certificate_expiry.remove_label_values(&[node]);
        let mut t = self.lock_tracked();
        t.forget(node);
        self.per_node_omitted.set(t.omitted.len() as i64);
    }

    /// Prometheus text exposition, with gauges derived from the registry refreshed first.
    pub fn render(&self, agents: &AgentRegistry) -> String {
        let counts = agents.count_by_transport();
        for kind in transport::TransportKind::ALL {
            let n = counts.get(kind).copied().unwrap_or(0);
            self.agents_connected
                .with_label_values(&[kind.as_str()])
                .set(n as i64);
        }
        self.replica_agents
            .with_label_values(&[agents.server_id().as_str()])
            .set(agents.len() as i64);
        let buffered = crate::frontend::grpc::budget::CALL_BUFFERS.used();
        self.grpc_buffered_bytes
            .set(i64::try_from(buffered).unwrap_or(i64::MAX));
        self.ip_conflicts.set(agents.conflicts().len() as i64);
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_series_appear_and_vanish_with_the_node() {
        let m = ServerMetrics::new().unwrap();
        let reg = AgentRegistry::new();
        let g = m.node_stream_opened("edge-1").unwrap();
        let (to, _) = m.node_byte_counters("edge-1").unwrap();
        to.inc_by(5);
        let text = m.render(&reg);
        assert!(
            text.contains("tunnel_server_node_streams_active{node=\"edge-1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "tunnel_server_node_bytes_total{direction=\"to_edge\",node=\"edge-1\"} 5"
            ),
            "{text}"
        );
        g.dec();
        m.forget_node("edge-1");
        assert!(!m.render(&reg).contains("edge-1"));
    }

    #[test]
    fn per_node_series_can_be_turned_off() {
        let m = ServerMetrics::new()
            .unwrap()
            .with_per_node(false, usize::MAX);
        assert!(m.node_stream_opened("edge-1").is_none());
        assert!(m.node_byte_counters("edge-1").is_none());
        assert!(!m.render(&AgentRegistry::new()).contains("edge-1"));
    }

    #[test]
    fn per_node_series_are_bounded_and_slots_free_on_disconnect() {
        let m = ServerMetrics::new().unwrap().with_per_node(true, 2);
        let reg = AgentRegistry::new();
        assert!(m.node_stream_opened("edge-1").is_some());
        assert!(m.node_byte_counters("edge-2").is_some());
        // A third node gets no series, and is counted.
        assert!(m.node_stream_opened("edge-3").is_none());
        assert!(m.node_byte_counters("edge-3").is_none());
        let text = m.render(&reg);
        assert!(!text.contains("edge-3"), "{text}");
        assert!(
            text.contains("tunnel_server_per_node_metrics_omitted_nodes 1"),
            "{text}"
        );
        // Nodes that have series keep them.
        assert!(m.node_stream_opened("edge-1").is_some());
        // edge-1 leaves: its slot goes to the next node that needs one.
        m.forget_node("edge-1");
        assert!(m.node_stream_opened("edge-3").is_some());
        let text = m.render(&reg);
        assert!(
            text.contains("tunnel_server_per_node_metrics_omitted_nodes 0"),
            "{text}"
        );
    }
}
