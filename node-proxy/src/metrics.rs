//! The node proxy's Prometheus metrics, registered into the registry of the
//! process that runs it (the agent's, so `/metrics` keeps one namespace).
//!
//! Names and labels are the spec's (`tunnel_agent_*`): they were the agent's
//! before the node proxy became a crate of its own, and dashboards use them.

use autonomy_cache::ResetReason;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::health::OfflineReason;

/// Every metric the node proxy updates; cheap to clone.
#[derive(Clone)]
pub struct HubMetrics {
    /// 1 while the apiserver is considered reachable.
    pub cloud_reachable: IntGauge,
    /// Switches between online and offline, by new state.
    pub hub_switches: IntCounterVec,
    /// Requests of cached components, by how they were answered.
    pub cache_requests: IntCounterVec,
    /// Cache operations that failed (requests still answered), by kind.
    pub cache_errors: IntCounterVec,
    /// Bytes the autonomy cache accounts (keys plus values).
    pub cache_bytes: IntGauge,
    /// Cache writes refused for the quota or a full disk since start.
    pub cache_refused_writes: IntGauge,
    /// Cache files moved aside and replaced by a fresh one, by reason.
    pub cache_resets: IntCounterVec,
    /// 1 for the current offline reason, 0 for the others.
    pub hub_offline: IntGaugeVec,
    /// Bytes of the apiserver's gzip responses, `side` compressed (as they
    /// crossed the link) or decoded (what the cache and the client got).
    pub hub_gzip_bytes: IntCounterVec,
}

impl HubMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
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
        let hub_gzip_bytes = IntCounterVec::new(
            Opts::new(
                "tunnel_agent_hub_gzip_bytes_total",
                "Node proxy: bytes of gzip responses from the apiserver; side: compressed (as received), decoded (as recorded and sent).",
            ),
            &["side"],
        )?;
        for side in ["compressed", "decoded"] {
            hub_gzip_bytes.with_label_values(&[side]);
        }
        registry.register(Box::new(hub_gzip_bytes.clone()))?;
        registry.register(Box::new(hub_offline.clone()))?;
        registry.register(Box::new(cache_resets.clone()))?;
        registry.register(Box::new(cache_bytes.clone()))?;
        registry.register(Box::new(cache_refused_writes.clone()))?;
        registry.register(Box::new(cloud_reachable.clone()))?;
        registry.register(Box::new(hub_switches.clone()))?;
        registry.register(Box::new(cache_requests.clone()))?;
        registry.register(Box::new(cache_errors.clone()))?;
        Ok(Self {
            cloud_reachable,
            hub_switches,
            cache_requests,
            cache_errors,
            cache_bytes,
            cache_refused_writes,
            cache_resets,
            hub_offline,
            hub_gzip_bytes,
        })
    }
}
