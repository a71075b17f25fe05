//! The controllers' Prometheus metrics, registered into tunnel-server's registry so they
//! appear on its `/metrics`.

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

/// Every controller metric.
#[derive(Clone)]
pub struct ControllerMetrics {
    /// Pod patches of the autonomy controller, by result
    /// (`patched`, `conflict`, `not_found`, `error`).
    pub autonomy_pod_patches: IntCounterVec,
    /// Nodes carrying the `edgetunnel.io/autonomy-duration` annotation (valid or not).
    pub autonomy_nodes: IntGauge,
    /// Hub serving CSRs reviewed, by decision (`approved`, `ignored`, `approve_failed`).
    pub hub_csr_reviews: IntCounterVec,
}

impl ControllerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let autonomy_pod_patches = IntCounterVec::new(
            Opts::new(
                "tunnel_server_autonomy_pod_patches_total",
                "Tolerations patches of pods on autonomous nodes, by result.",
            ),
            &["result"],
        )?;
        let autonomy_nodes = IntGauge::new(
            "tunnel_server_autonomy_nodes",
            "Nodes carrying the edgetunnel.io/autonomy-duration annotation.",
        )?;
        let hub_csr_reviews = IntCounterVec::new(
            Opts::new(
                "tunnel_server_hub_csr_reviews_total",
                "kubelet-serving CSRs reviewed as hub serving certificates, by decision.",
            ),
            &["decision"],
        )?;
        registry.register(Box::new(autonomy_pod_patches.clone()))?;
        registry.register(Box::new(autonomy_nodes.clone()))?;
        registry.register(Box::new(hub_csr_reviews.clone()))?;
        Ok(Self {
            autonomy_pod_patches,
            autonomy_nodes,
            hub_csr_reviews,
        })
    }
}
