//! The agent's Prometheus metrics, names as the spec fixes them.

use node_proxy::metrics::HubMetrics;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the agent exports, registered in its own registry.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Registry,
    pub connected: IntGaugeVec,
    pub reconnects: IntCounter,
    pub streams_active: IntGauge,
    pub dial_failures: IntCounterVec,
    pub bytes_total: IntCounterVec,
    /// `notAfter` of the agent's certificate (Unix seconds), refreshed on every load.
    pub certificate_expiry: IntGauge,
    /// The node proxy's metrics (`tunnel_agent_cloud_reachable`, `tunnel_agent_cache_*`, ...).
    pub hub: HubMetrics,
}

impl AgentMetrics {
    /// Creates and registers all metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let connected = IntGaugeVec::new(
            Opts::new(
                "tunnel_agent_connected",
                "1 while registered with a server, by transport and server address.",
            ),
            &["transport", "server"],
        )?;
        let reconnects = IntCounter::new(
            "tunnel_agent_reconnects_total",
            "Connection attempts after the first (each retry counts).",
        )?;
        let streams_active =
            IntGauge::new("tunnel_agent_streams_active", "Tunneled streams open now.")?;
        let dial_failures = IntCounterVec::new(
            Opts::new(
                "tunnel_agent_dial_failures_total",
                "Dials requested by the server that did not connect, by reason.",
            ),
            &["reason"],
        )?;
        let bytes_total = IntCounterVec::new(
            Opts::new(
                "tunnel_agent_bytes_total",
                "Bytes carried for the server; direction to_cloud or from_cloud.",
            ),
            &["direction"],
        )?;
        let certificate_expiry = IntGauge::new(
            "tunnel_agent_certificate_expiry_timestamp_seconds",
            "Expiry (notAfter) of the agent's certificate, Unix seconds.",
        )?;
        registry.register(Box::new(certificate_expiry.clone()))?;
        let hub = HubMetrics::register(&registry)?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;
        registry.register(Box::new(streams_active.clone()))?;
        registry.register(Box::new(dial_failures.clone()))?;
        registry.register(Box::new(bytes_total.clone()))?;
        Ok(Self {
            registry,
            connected,
            reconnects,
            streams_active,
            dial_failures,
            bytes_total,
            certificate_expiry,
            hub,
        })
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
