//! The server's Prometheus metrics, names as the spec fixes them.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
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
}

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
            registry: r,
        })
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
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
