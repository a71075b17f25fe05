//! The topology filter over recorded apiserver JSON (testdata/recorded/).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::*;
use crate::filters::json;

const SLICES: &[u8] = include_bytes!("../../testdata/recorded/endpointslice-list.json");
const ADDED: &[u8] = include_bytes!("../../testdata/recorded/endpointslice-watch-added.json");
const ENDPOINTS: &[u8] = include_bytes!("../../testdata/recorded/endpoints-list.json");
const NODE: &[u8] = include_bytes!("../../testdata/recorded/node.json");
const KUBE_DNS: &[u8] = include_bytes!("../../testdata/recorded/service-kube-dns.json");

/// The cache as a map: nodes by name, services by `ns/name`, this node's name.
#[derive(Default)]
struct Fake {
    own: Option<String>,
    nodes: HashMap<String, Map<String, Value>>,
    services: HashMap<String, Map<String, Value>>,
}

fn labels_of(object: &Value) -> Map<String, Value> {
    object["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

impl Fake {
    /// This node in `pool`, the recorded kube-dns Service (labelled for topology).
    fn in_pool(pool: &str) -> Fake {
        let mut fake = Fake {
            own: Some("me".into()),
            ..Fake::default()
        };
        fake.node("me", json!({ ZONE_LABEL: pool }));
        let kube_dns: Value = serde_json::from_slice(KUBE_DNS).unwrap();
        fake.services
            .insert("kube-system/kube-dns".into(), labels_of(&kube_dns));
        fake
    }

    fn node(&mut self, name: &str, labels: Value) {
        let labels = labels.as_object().cloned().unwrap();
        self.nodes.insert(name.into(), labels);
    }

    fn pooled_service(&mut self, key: &str) {
        let labels = json!({ TOPOLOGY_LABEL: TOPOLOGY_POOL });
        self.services
            .insert(key.into(), labels.as_object().cloned().unwrap());
    }
}

impl PoolContext for Fake {
    fn own_node_labels(&self) -> Option<Map<String, Value>> {
        self.nodes.get(self.own.as_deref()?).cloned()
    }
    fn node_labels(&self, name: &str) -> Option<Map<String, Value>> {
        self.nodes.get(name).cloned()
    }
    fn service_labels(&self, namespace: &str, name: &str) -> Option<Map<String, Value>> {
        self.services.get(&format!("{namespace}/{name}")).cloned()
    }
}

fn zones() -> Topology {
    Topology {
        pool_label: ZONE_LABEL.into(),
    }
}

fn edit<'a>(
    t: &'a Topology,
    resource: Resource,
    ctx: &'a Fake,
) -> impl Fn(&mut Value) -> bool + 'a {
    move |v: &mut Value| t.apply(resource, v, ctx)
}

fn items(body: &[u8]) -> Vec<Value> {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["items"].as_array().unwrap().clone()
}

fn addresses(slice: &Value) -> Vec<String> {
    slice["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["addresses"][0].as_str().unwrap().to_string())
        .collect()
}

/// The recorded ADDED event as `kind`, its one endpoint in `zone`.
fn event_in_zone(kind: &str, zone: &str) -> Vec<u8> {
    let mut event: Value = serde_json::from_slice(ADDED).unwrap();
    event["type"] = kind.into();
    event["object"]["endpoints"][0]["zone"] = zone.into();
    serde_json::to_vec(&event).unwrap()
}

#[test]
fn list_keeps_only_the_pools_endpoints_of_labelled_services() {
    let (t, ctx) = (zones(), Fake::in_pool("zone-a"));
    let before = items(SLICES);
    assert_eq!(addresses(&before[1]), ["10.244.0.3", "10.244.0.4"]);
    let out = json::list(SLICES, edit(&t, Resource::EndpointSlices, &ctx)).unwrap();
    let after = items(&out);
    assert_eq!(addresses(&after[1]), ["10.244.0.3"], "zone-b endpoint gone");
    assert_eq!(after[1]["ports"], before[1]["ports"]);
    assert_eq!(after[0], before[0], "default/kubernetes is not labelled");
    let ctx_b = Fake::in_pool("zone-b");
    let out = json::list(SLICES, edit(&t, Resource::EndpointSlices, &ctx_b)).unwrap();
    assert_eq!(addresses(&items(&out)[1]), ["10.244.0.4"]);
}

#[test]
fn unknown_pool_or_service_or_label_fails_open() {
    let t = zones();
    let mut no_node = Fake::in_pool("zone-a");
    no_node.own = None;
    let mut no_service = Fake::in_pool("zone-a");
    no_service.services.clear();
    let mut unlabelled = Fake::in_pool("zone-a");
    unlabelled.services.insert(
        "kube-system/kube-dns".into(),
        json!({"k8s-app": "kube-dns"}).as_object().cloned().unwrap(),
    );
    let mut node_without_pool = Fake::in_pool("zone-a");
    node_without_pool.node("me", json!({"kubernetes.io/os": "linux"}));
    for ctx in [no_node, no_service, unlabelled, node_without_pool] {
        let edit = edit(&t, Resource::EndpointSlices, &ctx);
        assert_eq!(json::list(SLICES, edit), None);
    }
}

#[test]
fn watch_endpoint_leaving_and_returning_to_the_pool() {
    let t = zones();
    let mut ctx = Fake::in_pool("540001");
    ctx.pooled_service("kube-system/externalnode-proxy");
    let edit = edit(&t, Resource::EndpointSlices, &ctx);
    // In the pool: the recorded event passes byte for byte.
    assert_eq!(json::event(ADDED.trim_ascii_end(), &edit), None);
    // The endpoint moves to another zone: the client sees it leave.
    let moved = event_in_zone("MODIFIED", "540002");
    let out: Value = serde_json::from_slice(&json::event(&moved, &edit).unwrap()).unwrap();
    assert_eq!(out["type"], "MODIFIED");
    assert_eq!(
        out["object"]["endpoints"],
        json!([]),
        "shown empty, not deleted"
    );
    assert_eq!(out["object"]["metadata"]["resourceVersion"], "5493506153");
    // It comes back: an unfiltered MODIFIED shows it again.
    let back = event_in_zone("MODIFIED", "540001");
    assert_eq!(json::event(&back, &edit), None);
    // Deleted while out of the pool: still a DELETED, filtered the same way.
    let gone = event_in_zone("DELETED", "540002");
    let out: Value = serde_json::from_slice(&json::event(&gone, &edit).unwrap()).unwrap();
    assert_eq!(out["type"], "DELETED");
    assert_eq!(out["object"]["endpoints"], json!([]));
}

#[test]
fn a_custom_pool_label_reads_the_endpoints_node() {
    let t = Topology {
        pool_label: "apps.openyurt.io/nodepool".into(),
    };
    let mut ctx = Fake::in_pool("ignored");
    ctx.node("me", json!({"apps.openyurt.io/nodepool": "p1"}));
    ctx.pooled_service("kube-system/externalnode-proxy");
    let run = |ctx: &Fake| {
        json::event(
            ADDED.trim_ascii_end(),
            edit(&t, Resource::EndpointSlices, ctx),
        )
    };
    // The endpoint's node (10.0.0.29) is not cached: kept, its zone ignored.
    assert_eq!(run(&ctx), None);
    ctx.node("10.0.0.29", json!({"apps.openyurt.io/nodepool": "p2"}));
    let out: Value = serde_json::from_slice(&run(&ctx).unwrap()).unwrap();
    assert_eq!(out["object"]["endpoints"], json!([]));
    ctx.node("10.0.0.29", json!({"apps.openyurt.io/nodepool": "p1"}));
    assert_eq!(run(&ctx), None);
}

#[test]
fn v1_endpoints_filter_by_the_address_nodes_pool() {
    let t = zones();
    let node: Value = serde_json::from_slice(NODE).unwrap();
    let mut ctx = Fake::in_pool("zone-b");
    ctx.nodes.insert("dummyNode".into(), labels_of(&node));
    ctx.pooled_service("default/nginx-service");
    let out = json::list(ENDPOINTS, edit(&t, Resource::Endpoints, &ctx)).unwrap();
    let after = items(&out);
    assert_eq!(
        after[1]["subsets"],
        json!([]),
        "its one address is in zone-a"
    );
    assert_eq!(after[0], items(ENDPOINTS)[0]);
    let same_pool = {
        let mut ctx = Fake::in_pool("zone-a");
        ctx.nodes.insert("dummyNode".into(), labels_of(&node));
        ctx.pooled_service("default/nginx-service");
        ctx
    };
    assert_eq!(
        json::list(ENDPOINTS, edit(&t, Resource::Endpoints, &same_pool)),
        None
    );
    // The address's node is not cached: nothing is dropped.
    ctx.nodes.remove("dummyNode");
    assert_eq!(
        json::list(ENDPOINTS, edit(&t, Resource::Endpoints, &ctx)),
        None
    );
}

#[test]
fn odd_shapes_pass_unchanged() {
    let (t, mut ctx) = (zones(), Fake::in_pool("zone-a"));
    ctx.pooled_service("ns/svc");
    for mut object in [
        json!({"metadata": {"namespace": "ns", "labels": {SERVICE_NAME_LABEL: "svc"}}}),
        json!({"metadata": {"namespace": "ns", "labels": {SERVICE_NAME_LABEL: "svc"}},
               "endpoints": "x"}),
        json!({"metadata": {"namespace": "ns", "labels": {SERVICE_NAME_LABEL: "svc"}},
               "endpoints": [1, {"zone": 3}, {"nodeName": ["a"]}]}),
        json!({"metadata": {"namespace": "ns", "name": "svc"}, "subsets": [1, {"addresses": 2}]}),
    ] {
        let copy = object.clone();
        assert!(!t.apply(Resource::EndpointSlices, &mut object, &ctx));
        assert!(!t.apply(Resource::Services, &mut object, &ctx));
        assert!(!t.apply(Resource::Endpoints, &mut object, &ctx));
        assert_eq!(object, copy);
    }
}
