//! Admin endpoints: `/metrics`, `/healthz`, `/readyz`, `/agents`, `/sd`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use transport::admin::{AdminHandler, AdminResponse, StatusCode};

use crate::metrics::ServerMetrics;
use crate::registry::AgentRegistry;

/// Port the `/sd` targets point at (kubelet).
pub const SD_PORT: u16 = 10250;

/// One Prometheus HTTP-SD target group.
#[derive(Debug, Serialize)]
struct TargetGroup {
    targets: Vec<String>,
    labels: SdLabels,
}

#[derive(Debug, Serialize)]
struct SdLabels {
    node: String,
    transport: &'static str,
}

/// Builds the admin router.
pub fn handler(
    registry: Arc<AgentRegistry>,
    metrics: ServerMetrics,
    ready: Arc<AtomicBool>,
) -> AdminHandler {
    Arc::new(move |path, query| match path {
        "/healthz" => AdminResponse::text(StatusCode::OK, "ok\n"),
        "/readyz" => readyz(&registry, &ready, query),
        "/metrics" => {
            let mut r = AdminResponse::text(StatusCode::OK, metrics.render(&registry));
            r.content_type = "text/plain; version=0.0.4; charset=utf-8";
            r
        }
        "/agents" => {
            AdminResponse::json(serde_json::to_vec_pretty(&registry.snapshot()).unwrap_or_default())
        }
        "/sd" => AdminResponse::json(serde_json::to_vec(&sd_groups(&registry)).unwrap_or_default()),
        _ => AdminResponse::text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /healthz /readyz /agents /sd\n",
        ),
    })
}

fn readyz(registry: &AgentRegistry, ready: &AtomicBool, query: Option<&str>) -> AdminResponse {
    if !ready.load(Ordering::Acquire) {
        return AdminResponse::text(StatusCode::SERVICE_UNAVAILABLE, "listeners not bound yet\n");
    }
    let want_agents: usize = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("agents="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let have = registry.len();
    if have < want_agents {
        return AdminResponse::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{have} agents connected, {want_agents} required\n"),
        );
    }
    AdminResponse::text(StatusCode::OK, format!("ready; {have} agents connected\n"))
}

fn sd_groups(registry: &AgentRegistry) -> Vec<TargetGroup> {
    registry
        .snapshot()
        .into_iter()
        .map(|a| {
            let host = match a.ips.first() {
                Some(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
                Some(ip) => ip.to_string(),
                None => a.node.clone(),
            };
            TargetGroup {
                targets: vec![format!("{host}:{SD_PORT}")],
                labels: SdLabels {
                    node: a.node,
                    transport: a.transport,
                },
            }
        })
        .collect()
}
