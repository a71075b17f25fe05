//! Admin endpoints: `/metrics`, `/healthz`, `/readyz`, `/agents`, `/sd`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Serialize;
use transport::admin::{AdminHandler, AdminResponse, StatusCode};

use crate::agents_query;
use crate::metrics::ServerMetrics;
use crate::registry::{AgentInfo, AgentRegistry};

/// Default port of the `/sd` targets (kubelet); `--sd-port` overrides it.
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
    draining: Arc<AtomicBool>,
    sd_ports: Arc<Vec<u16>>,
) -> AdminHandler {
    Arc::new(move |path, query| match path {
        "/healthz" => AdminResponse::text(StatusCode::OK, "ok\n"),
        "/readyz" if draining.load(Ordering::Acquire) => AdminResponse::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining (SIGTERM): open streams finish, new requests belong to the other replicas\n",
        ),
        "/readyz" => readyz(&registry, &ready, query),
        "/metrics" => {
            let mut r = AdminResponse::text(StatusCode::OK, metrics.render(&registry));
            r.content_type = "text/plain; version=0.0.4; charset=utf-8";
            r
        }
        "/agents" => agents(&registry, query),
        "/sd" => AdminResponse::json(
            serde_json::to_vec(&sd_groups(&registry.snapshot(), &sd_ports)).unwrap_or_default(),
        ),
        _ => AdminResponse::text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /healthz /readyz /agents /sd\n",
        ),
    })
}

/// `/agents`, filtered and paged as [`crate::agents_query`] describes.
fn agents(registry: &AgentRegistry, query: Option<&str>) -> AdminResponse {
    let q = match agents_query::parse(query) {
        Ok(q) => q,
        Err(e) => return AdminResponse::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // One node is looked up, not listed out of the whole fleet.
    let all = match &q.node {
        Some(node) => registry.info(node).into_iter().collect(),
        None => registry.snapshot(),
    };
    let body = match agents_query::select(&all, &q) {
        (rows, None) => serde_json::to_vec_pretty(rows),
        (items, Some(continue_token)) => serde_json::to_vec_pretty(&agents_query::AgentsPage {
            items,
            continue_token,
        }),
    };
    AdminResponse::json(body.unwrap_or_default())
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

/// One target group per agent: its first node IP that no other node claims
/// (or, without one, its node name, which the front ends route too) at each
/// of `ports`.
fn sd_groups(agents: &[AgentInfo], ports: &[u16]) -> Vec<TargetGroup> {
    agents
        .iter()
        .map(|a| {
            let ambiguous = |ip: &&std::net::IpAddr| a.ip_conflicts.iter().any(|c| c.ip == **ip);
            let host = match a.ips.iter().find(|ip| !ambiguous(ip)) {
                Some(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
                Some(ip) => ip.to_string(),
                None => a.node.clone(),
            };
            TargetGroup {
                targets: ports.iter().map(|p| format!("{host}:{p}")).collect(),
                labels: SdLabels {
                    node: a.node.clone(),
                    transport: a.transport,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(node: &str, ips: &[&str]) -> AgentInfo {
        AgentInfo::for_tests(node, ips)
    }

    #[test]
    fn one_group_per_node_and_one_target_per_port() {
        let agents = [
            agent("a", &["10.0.0.5", "10.0.0.6"]),
            agent("b", &["fd00::7"]),
            agent("c", &[]),
        ];
        let json = serde_json::to_value(sd_groups(&agents, &[9100, SD_PORT])).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"targets": ["10.0.0.5:9100", "10.0.0.5:10250"], "labels": {"node": "a", "transport": "quic"}},
                {"targets": ["[fd00::7]:9100", "[fd00::7]:10250"], "labels": {"node": "b", "transport": "quic"}},
                {"targets": ["c:9100", "c:10250"], "labels": {"node": "c", "transport": "quic"}},
            ])
        );
    }
}
