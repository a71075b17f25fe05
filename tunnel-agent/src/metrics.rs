//! The agent's Prometheus metrics, names as the spec fixes them.

use crate::hub::health::OfflineReason;
use autonomy_cache::ResetReason;
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
    /// Node proxy: 1 while the apiserver is considered reachable.
    pub cloud_reachable: IntGauge,
    /// Node proxy: switches between online and offline, by new state.
    pub hub_switches: IntCounterVec,
    /// Node proxy: requests of cached components, by how they were answered.
    pub cache_requests: IntCounterVec,
    /// Node proxy: cache operations that failed (requests still answered), by kind.
    pub cache_errors: IntCounterVec,
    /// Node proxy: bytes the autonomy cache accounts (keys plus values).
    pub cache_bytes: IntGauge,
    /// Node proxy: cache writes refused for the quota or a full disk since start.
    pub cache_refused_writes: IntGauge,
    /// Node proxy: cache files moved aside and replaced by a fresh one, by reason.
    pub cache_resets: IntCounterVec,
    /// Node proxy: 1 for the current offline reason, 0 for the others.
    pub hub_offline: IntGaugeVec,
}

impl AgentMetrics {
    /// Creates and registers all metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let connected = IntGaugeVec::new(
            Opts::new(
                "tunnel_agent_connected",
                "1 while registered with the server, by transport.",
            ),
            &["transport"],
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
        let cloud_reachable = IntGauge::new(
            "tunnel_agent_cloud_reachable",
            "1 while the node proxy's upstream apiserver answers, 0 while answering from the cache.",
        )?;
        let hub_switches = IntCounterVec::new(
            Opts::new(
                "tunnel_agent_hub_switches_total",
                "Node proxy switches between online and offline, by the state switched to.",
            ),
            &["to"],
        )?;
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "tunnel_agent_cache_requests_total",
                "Node proxy requests of cached components; result: upstream, upstream_uncached, cache, held, error.",
            ),
            &["component", "verb", "result"],
        )?;
        let cache_errors = IntCounterVec::new(
            Opts::new(
                "tunnel_agent_cache_errors_total",
                "Autonomy cache operations that failed; the request was answered anyway.",
            ),
            &["kind"],
        )?;
        let cache_bytes = IntGauge::new(
            "tunnel_agent_cache_bytes",
            "Bytes the autonomy cache holds (keys plus values), against --cache-max-bytes.",
        )?;
        let cache_refused_writes = IntGauge::new(
            "tunnel_agent_cache_refused_writes",
            "Autonomy cache writes refused since start because of the quota or a full disk.",
        )?;
        let cache_resets = IntCounterVec::new(
            Opts::new(
                "tunnel_agent_cache_resets_total",
                "Autonomy cache files that could not be used and were moved aside for a fresh one; reason: corrupt, version, unreadable, panic.",
            ),
            &["reason"],
        )?;
        for reason in ResetReason::ALL {
            cache_resets.with_label_values(&[reason.label()]);
        }
        let hub_offline = IntGaugeVec::new(
            Opts::new(
                "tunnel_agent_hub_offline",
                "Node proxy: 1 for the reason it is offline now (all 0 while it forwards).",
            ),
            &["reason"],
        )?;
        for reason in OfflineReason::ALL {
            hub_offline.with_label_values(&[reason.label()]);
        }
        registry.register(Box::new(hub_offline.clone()))?;
        registry.register(Box::new(cache_resets.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        registry.register(Box::new(cache_refused_writes.clone()))?;
        registry.register(Box::new(cloud_reachable.clone()))?;
        registry.register(Box::new(hub_switches.clone()))?;
        registry.register(Box::new(cache_requests.clone()))?;
        registry.register(Box::new(cache_errors.clone()))?;
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
            cloud_reachable,
            hub_switches,
            cache_requests,
            cache_errors,
            cache_bytes,
            cache_refused_writes,
            cache_resets,
            hub_offline,
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
