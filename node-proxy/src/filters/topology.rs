//! Service topology: for Services labelled `edgetunnel.io/topology=pool`,
//! kube-proxy and CoreDNS see only the endpoints in this node's pool, so
//! traffic stays inside a site whose nodes cannot reach other sites' pods.
//!
//! A node's pool is its `--pool-label` label (default
//! `topology.kubernetes.io/zone`). An endpoint's pool is its EndpointSlice
//! `zone` when the pool label is the zone label (the EndpointSlice controller
//! copies the node's zone there), else the pool label of its `nodeName`'s
//! node if that node is cached; an endpoint whose pool is unknown is kept.
//!
//! Fail open: when this node's pool, the Service or its label is unknown,
//! the object passes unchanged. Hiding endpoints on a guess could leave a
//! service with none at all, which breaks it; showing too many only costs
//! the cross-site detour the cluster had before the label was set.
//!
//! The filter never hides an object, only endpoints inside it: a slice left
//! without endpoints is shown with `endpoints: []`, the shape the
//! EndpointSlice controller itself gives a Service without ready pods and
//! that kube-proxy and CoreDNS read as "no endpoints". So every event keeps
//! its type (an endpoint leaving the pool during a watch is a MODIFIED
//! without it) and no per-watch state is needed: each event carries the
//! whole object, filtered the same way a list is.

use serde_json::{Map, Value};

use super::json::{label, meta_str};
use super::masterservice::SERVICE_NAME_LABEL;
use super::Resource;

/// The Service label that asks for pool topology, and its value.
pub const TOPOLOGY_LABEL: &str = "edgetunnel.io/topology";
pub const TOPOLOGY_POOL: &str = "pool";
/// The well-known zone label (`--pool-label` default).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// What the filter reads about the cluster (from the autonomy cache).
pub trait PoolContext {
    /// Labels of this node, if its Node object is known.
    fn own_node_labels(&self) -> Option<Map<String, Value>>;
    /// Labels of node `name`, if known.
    fn node_labels(&self, name: &str) -> Option<Map<String, Value>>;
    /// Labels of Service `namespace/name`, if known.
    fn service_labels(&self, namespace: &str, name: &str) -> Option<Map<String, Value>>;
}

/// The topology filter with its `--pool-label`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub pool_label: String,
}

fn string_label<'a>(labels: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    labels.get(key).and_then(Value::as_str)
}

impl Topology {
    /// Drops out-of-pool endpoints from `object` (of `resource`); returns whether it changed.
    pub fn apply(&self, resource: Resource, object: &mut Value, ctx: &dyn PoolContext) -> bool {
        let service = match resource {
            Resource::EndpointSlices => label(object, SERVICE_NAME_LABEL),
            Resource::Endpoints => meta_str(object, "name"),
            Resource::Services => None,
        };
        let (Some(namespace), Some(service)) = (meta_str(object, "namespace"), service) else {
            return false;
        };
        let wanted = ctx
            .service_labels(namespace, service)
            .is_some_and(|l| string_label(&l, TOPOLOGY_LABEL) == Some(TOPOLOGY_POOL));
        if !wanted {
            return false;
        }
        let Some(own) = ctx.own_node_labels() else {
            return false;
        };
        let Some(own) = string_label(&own, &self.pool_label) else {
            return false;
        };
        match resource {
            Resource::EndpointSlices => self.slice(object, own, ctx),
            Resource::Endpoints => self.endpoints(object, own, ctx),
            Resource::Services => false,
        }
    }

    /// The pool of node `name`, if it is cached and labelled.
    fn node_pool(&self, name: Option<&str>, ctx: &dyn PoolContext) -> Option<String> {
        let labels = ctx.node_labels(name?)?;
        string_label(&labels, &self.pool_label).map(str::to_string)
    }

    fn slice(&self, object: &mut Value, own: &str, ctx: &dyn PoolContext) -> bool {
        let Some(endpoints) = object.get_mut("endpoints").and_then(Value::as_array_mut) else {
            return false;
        };
        let before = endpoints.len();
        endpoints.retain(|endpoint| {
            let zone = endpoint.get("zone").and_then(Value::as_str);
            let pool = match zone {
                Some(zone) if self.pool_label == ZONE_LABEL => Some(zone.to_string()),
                _ => self.node_pool(endpoint.get("nodeName").and_then(Value::as_str), ctx),
            };
            pool.is_none_or(|pool| pool == own)
        });
        endpoints.len() != before
    }

    fn endpoints(&self, object: &mut Value, own: &str, ctx: &dyn PoolContext) -> bool {
        let Some(subsets) = object.get_mut("subsets").and_then(Value::as_array_mut) else {
            return false;
        };
        let mut changed = false;
        let mut emptied = Vec::new();
        for (i, subset) in subsets.iter_mut().enumerate() {
            let Some(subset) = subset.as_object_mut() else {
                continue;
            };
            let mut dropped = false;
            let mut left = 0;
            for field in ["addresses", "notReadyAddresses"] {
                let Some(addresses) = subset.get_mut(field).and_then(Value::as_array_mut) else {
                    continue;
                };
                let before = addresses.len();
                addresses.retain(|address| {
                    let node = address.get("nodeName").and_then(Value::as_str);
                    self.node_pool(node, ctx).is_none_or(|pool| pool == own)
                });
                dropped |= addresses.len() != before;
                left += addresses.len();
            }
            changed |= dropped;
            if dropped && left == 0 {
                emptied.push(i);
            }
        }
        // A subset without addresses is not valid Endpoints: drop the ones we emptied.
        for i in emptied.into_iter().rev() {
            subsets.remove(i);
        }
        changed
    }
}

#[cfg(test)]
#[path = "topology_tests.rs"]
mod tests;
