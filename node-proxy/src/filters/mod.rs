//! Response filters: what cached components are shown differs from what the
//! apiserver sent, on the way out to the client only. The autonomy cache
//! keeps upstream's objects unfiltered, so switching a filter needs no
//! re-cache and offline answers pass through the same filter as online ones.
//!
//! - [`masterservice`]: kubelet sees `default/kubernetes` at the node
//!   proxy's HTTPS listener (`--hub-filter-masterservice`, `--hub-https-addr`);
//! - [`topology`]: kube-proxy and CoreDNS see only this pool's endpoints of
//!   Services labelled `edgetunnel.io/topology=pool` (`--hub-filter-topology`,
//!   `--pool-label`).
//!
//! The proxy asks [`Filters::for_request`] once per request; `None` (the
//! common case) means the response streams untouched. A [`ResponseFilter`]
//! rewrites a get/list body or one watch event line and returns `None` when
//! nothing changed, so untouched responses keep upstream's exact bytes.

mod json;
mod masterservice;
mod topology;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use autonomy_cache::{AutonomyCache, RequestInfo, RequestKind, Verb};
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::settings::FilterSettings;
use masterservice::MasterService;
use topology::{PoolContext, Topology};

/// Components whose view of the apiserver's Service is rewritten.
const MASTERSERVICE_FOR: &[&str] = &["kubelet"];
/// Components whose endpoints are filtered by pool.
const TOPOLOGY_FOR: &[&str] = &["kube-proxy", "coredns"];
/// Components whose cached objects hold this node (kubelet gets its node).
const NODE_HOLDERS: &[&str] = &["kubelet", "kube-proxy", "coredns"];

/// The resources the filters read and edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Services,
    Endpoints,
    EndpointSlices,
}

impl Resource {
    /// `None` for any other resource, subresource or version.
    fn of(info: &RequestInfo) -> Option<Resource> {
        let RequestKind::Resource {
            group,
            version,
            resource,
            subresource: None,
            ..
        } = &info.kind
        else {
            return None;
        };
        match (group.as_str(), version.as_str(), resource.as_str()) {
            ("", "v1", "services") => Some(Resource::Services),
            ("", "v1", "endpoints") => Some(Resource::Endpoints),
            ("discovery.k8s.io", "v1", "endpointslices") => Some(Resource::EndpointSlices),
            _ => None,
        }
    }
}

/// The configured filters and the cache they read context from; cheap to clone.
#[derive(Clone)]
pub struct Filters {
    settings: Arc<FilterSettings>,
    cache: AutonomyCache,
}

impl Filters {
    pub fn new(settings: FilterSettings, cache: AutonomyCache) -> Filters {
        Filters {
            settings: Arc::new(settings),
            cache,
        }
    }

    /// The filter for responses to `info` asked by `component`, if one applies.
    pub fn for_request(&self, component: &str, info: &RequestInfo) -> Option<ResponseFilter> {
        if !matches!(info.verb, Verb::Get | Verb::List | Verb::Watch) {
            return None;
        }
        let resource = Resource::of(info)?;
        let masterservice = self
            .settings
            .masterservice
            .filter(|_| MASTERSERVICE_FOR.contains(&component))
            .map(|addr| MasterService { addr });
        let topology = (self.settings.topology
            && TOPOLOGY_FOR.contains(&component)
            && resource != Resource::Services)
            .then(|| {
                let topology = Topology {
                    pool_label: self.settings.pool_label.clone(),
                };
                let ctx = CacheContext {
                    cache: self.cache.clone(),
                    component: component.to_string(),
                    node_name: self.settings.node_name.clone(),
                    own: Mutex::new(None),
                };
                (
                    topology,
                    Box::new(ctx) as Box<dyn PoolContext + Send + Sync>,
                )
            });
        if masterservice.is_none() && topology.is_none() {
            return None;
        }
        Some(ResponseFilter {
            resource,
            list: info.verb == Verb::List,
            masterservice,
            topology,
        })
    }
}

/// The filters for one response.
pub struct ResponseFilter {
    resource: Resource,
    /// The body is a list (else one object, or watch events).
    list: bool,
    masterservice: Option<MasterService>,
    topology: Option<(Topology, Box<dyn PoolContext + Send + Sync>)>,
}

impl ResponseFilter {
    fn edit(&self, object: &mut Value) -> bool {
        let mut changed = false;
        if let Some(m) = &self.masterservice {
            changed |= m.apply(self.resource, object);
        }
        if let Some((t, ctx)) = &self.topology {
            changed |= t.apply(self.resource, object, ctx.as_ref());
        }
        changed
    }

    /// A whole get or list body: the filtered body, or `None` to send upstream's bytes.
    pub fn body(&self, body: &[u8]) -> Option<Bytes> {
        let edit = |v: &mut Value| self.edit(v);
        if self.list {
            json::list(body, edit)
        } else {
            json::object(body, edit)
        }
    }

    /// One watch event line (no newline): the filtered line, or `None` to send upstream's.
    pub fn event(&self, line: &[u8]) -> Option<Bytes> {
        json::event(line, |v: &mut Value| self.edit(v))
    }
}

/// How long this node's labels, once read, serve a response's further items
/// and events (a list of many slices reads and parses the Node once).
const OWN_NODE_FRESH: Duration = Duration::from_secs(1);

/// This node's labels as last read, and when.
type OwnLabels = Option<(Instant, Option<Map<String, Value>>)>;

/// The topology filter's context, read from the autonomy cache: this node
/// as kubelet (or the asking component) got it, Services as the asking
/// component (kube-proxy, CoreDNS: both list them) got them.
struct CacheContext {
    cache: AutonomyCache,
    component: String,
    node_name: String,
    own: Mutex<OwnLabels>,
}

impl CacheContext {
    /// Labels of the first copy found among `components`.
    fn labels<'a>(
        &self,
        components: impl IntoIterator<Item = &'a str>,
        gvr: (&str, &str, &str),
        namespace: &str,
        name: &str,
    ) -> Option<Map<String, Value>> {
        for component in components {
            match self.cache.stored_object(component, gvr, namespace, name) {
                Ok(Some(json)) => {
                    let object: Value = serde_json::from_slice(&json).ok()?;
                    let labels = object.get("metadata")?.get("labels");
                    return Some(
                        labels
                            .and_then(Value::as_object)
                            .cloned()
                            .unwrap_or_default(),
                    );
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(component, error = %e, "filter context unreadable; failing open");
                    return None;
                }
            }
        }
        None
    }

    fn asker_first<'a>(&'a self, others: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
        std::iter::once(self.component.as_str()).chain(others.iter().copied())
    }
}

impl PoolContext for CacheContext {
    fn own_node_labels(&self) -> Option<Map<String, Value>> {
        if self.node_name.is_empty() {
            return None;
        }
        let mut own = self.own.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((read, labels)) = own.as_ref() {
            if read.elapsed() < OWN_NODE_FRESH {
                return labels.clone();
            }
        }
        let labels = self.node_labels(&self.node_name);
        *own = Some((Instant::now(), labels.clone()));
        labels
    }

    fn node_labels(&self, name: &str) -> Option<Map<String, Value>> {
        let holders = NODE_HOLDERS.iter().copied();
        self.labels(holders, ("", "v1", "nodes"), "", name)
    }

    fn service_labels(&self, namespace: &str, name: &str) -> Option<Map<String, Value>> {
        let components = self.asker_first(TOPOLOGY_FOR);
        self.labels(components, ("", "v1", "services"), namespace, name)
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
