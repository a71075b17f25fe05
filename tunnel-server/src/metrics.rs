//! The server's Prometheus metrics, names as the spec fixes them.

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
    /// Whether the `node` label is used; off for fleets too large for one
    /// series per node (`--per-node-metrics=false`).
    per_node: bool,
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
            registry: r,
            per_node: true,
        })
    }

    /// Turns the per-node series on or off (on by default).
    pub fn with_per_node(mut self, on: bool) -> Self {
        self.per_node = on;
        self
    }

    /// Records when `node`'s certificate expires (Unix seconds), when
    /// per-node metrics are on; with them off the expiry warning log remains.
    pub fn set_agent_certificate_expiry(&self, node: &str, not_after: i64) {
        if self.per_node {
            self.agent_certificate_expiry
                .with_label_values(&[node])
                .set(not_after);
        }
    }

    /// Records a newly opened stream of `node`; returns its active gauge
    /// (to decrement when the stream ends) when per-node metrics are on.
    pub fn node_stream_opened(&self, node: &str) -> Option<IntGauge> {
        if !self.per_node {
            return None;
        }
        self.node_streams_total.with_label_values(&[node]).inc();
        let g = self.node_streams_active.with_label_values(&[node]);
        g.inc();
        Some(g)
    }

    /// The (to_edge, from_edge) byte counters of `node`, when per-node metrics are on.
    pub fn node_byte_counters(&self, node: &str) -> Option<(IntCounter, IntCounter)> {
        self.per_node.then(|| {
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
        let buffered = crate::frontend::grpc::budget::CALL_BUFFERS.used();
        self.grpc_buffered_bytes
            .set(i64::try_from(buffered).unwrap_or(i64::MAX));
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
        let m = ServerMetrics::new().unwrap().with_per_node(false);
        assert!(m.node_stream_opened("edge-1").is_none());
        assert!(m.node_byte_counters("edge-1").is_none());
        assert!(!m.render(&AgentRegistry::new()).contains("edge-1"));
    }
}
