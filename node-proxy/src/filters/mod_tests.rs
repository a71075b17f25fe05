//! Which requests get which filter, byte identity of what no filter touches,
//! and the topology filter reading its context from a real autonomy cache.

use std::time::Duration;

use autonomy_cache::CacheConfig;

use super::topology::ZONE_LABEL;
use super::*;

const SERVICES: &[u8] = include_bytes!("../../testdata/recorded/service-list.json");
const ENDPOINTS: &[u8] = include_bytes!("../../testdata/recorded/endpoints-list.json");
const SLICES: &[u8] = include_bytes!("../../testdata/recorded/endpointslice-list.json");
const ADDED: &[u8] = include_bytes!("../../testdata/recorded/endpointslice-watch-added.json");
const NODE: &[u8] = include_bytes!("../../testdata/recorded/node.json");
const KUBE_DNS: &[u8] = include_bytes!("../../testdata/recorded/service-kube-dns.json");

fn all_on() -> FilterSettings {
    FilterSettings {
        masterservice: Some("169.254.2.1:10268".parse().unwrap()),
        topology: true,
        pool_label: ZONE_LABEL.into(),
        node_name: "dummyNode".into(),
    }
}

fn req(target: &str) -> RequestInfo {
    RequestInfo::parse("GET", target).unwrap()
}

fn open_cache(dir: &std::path::Path) -> AutonomyCache {
    AutonomyCache::open(CacheConfig {
        dir: dir.to_path_buf(),
        max_bytes: 16 << 20,
        gc_after: Duration::from_secs(3600),
        commit_interval: Duration::from_millis(2),
    })
    .unwrap()
}

const SLICE_LIST: &str = "/apis/discovery.k8s.io/v1/endpointslices";

#[test]
fn filters_are_chosen_by_component_resource_and_verb() {
    let filters = Filters::new(all_on(), AutonomyCache::disabled("test".into()));
    let some =
        |component: &str, target: &str| filters.for_request(component, &req(target)).is_some();
    assert!(some("kubelet", "/api/v1/services"));
    assert!(some(
        "kubelet",
        "/api/v1/namespaces/default/services/kubernetes"
    ));
    assert!(some("kubelet", "/api/v1/services?watch=true"));
    assert!(some(
        "kubelet",
        "/api/v1/namespaces/default/endpoints/kubernetes"
    ));
    assert!(some("kubelet", SLICE_LIST));
    assert!(some("kube-proxy", SLICE_LIST));
    assert!(some(
        "kube-proxy",
        "/apis/discovery.k8s.io/v1/endpointslices?watch=1"
    ));
    assert!(some("coredns", "/api/v1/endpoints"));
    assert!(
        !some("kube-proxy", "/api/v1/services"),
        "topology edits endpoints only"
    );
    assert!(!some("kubelet", "/api/v1/pods"));
    assert!(!some("flanneld", SLICE_LIST));
    assert!(!some(
        "kubelet",
        "/api/v1/namespaces/default/services/kubernetes/status"
    ));
    assert!(!some(
        "kubelet",
        "/apis/discovery.k8s.io/v1beta1/endpointslices"
    ));
    let put = RequestInfo::parse("PUT", "/api/v1/namespaces/default/services/kubernetes").unwrap();
    assert!(filters.for_request("kubelet", &put).is_none());
    let off = Filters::new(
        FilterSettings::default(),
        AutonomyCache::disabled("t".into()),
    );
    for (component, target) in [("kubelet", "/api/v1/services"), ("kube-proxy", SLICE_LIST)] {
        assert!(off.for_request(component, &req(target)).is_none());
    }
}

#[test]
fn responses_no_filter_touches_keep_upstream_bytes() {
    // Filters on, but nothing in these responses is theirs to change: with
    // no cached Service labelled for topology, and for lists without the
    // apiserver's own objects, every answer is "send upstream's bytes".
    let filters = Filters::new(all_on(), AutonomyCache::disabled("test".into()));
    let kube_proxy = |target: &str| filters.for_request("kube-proxy", &req(target)).unwrap();
    assert_eq!(kube_proxy(SLICE_LIST).body(SLICES), None);
    assert_eq!(kube_proxy("/api/v1/endpoints").body(ENDPOINTS), None);
    let watch = kube_proxy("/apis/discovery.k8s.io/v1/endpointslices?watch=1");
    assert_eq!(watch.event(ADDED.trim_ascii_end()), None);
    let kubelet = filters
        .for_request("kubelet", &req("/api/v1/services"))
        .unwrap();
    let v: Value = serde_json::from_slice(SERVICES).unwrap();
    let others = serde_json::json!({"kind": "ServiceList", "apiVersion": "v1",
        "metadata": v["metadata"], "items": [v["items"][1]]});
    assert_eq!(kubelet.body(&serde_json::to_vec(&others).unwrap()), None);
    let get = filters
        .for_request(
            "kubelet",
            &req("/api/v1/namespaces/kube-system/services/kube-dns"),
        )
        .unwrap();
    assert_eq!(get.body(KUBE_DNS), None);
    assert!(
        kubelet.body(SERVICES).is_some(),
        "but default/kubernetes is changed"
    );
}

#[tokio::test]
async fn topology_reads_this_node_and_the_service_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = open_cache(dir.path());
    let filters = Filters::new(all_on(), cache.clone());
    let list = filters.for_request("kube-proxy", &req(SLICE_LIST)).unwrap();
    assert_eq!(list.body(SLICES), None, "nothing cached yet: fail open");
    let node = req("/api/v1/nodes/dummyNode");
    cache
        .record_response("kubelet", &node, Bytes::from_static(NODE))
        .await
        .unwrap();
    assert_eq!(list.body(SLICES), None, "Service unknown: fail open");
    let service = req("/api/v1/namespaces/kube-system/services/kube-dns");
    cache
        .record_response("kube-proxy", &service, Bytes::from_static(KUBE_DNS))
        .await
        .unwrap();
    for component in ["kube-proxy", "coredns"] {
        let filter = filters.for_request(component, &req(SLICE_LIST)).unwrap();
        let out: Value = serde_json::from_slice(&filter.body(SLICES).unwrap()).unwrap();
        let kept: Vec<&Value> = out["items"][1]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["addresses"][0])
            .collect();
        assert_eq!(
            kept,
            ["10.244.0.3"],
            "{component}: only the zone-a endpoint"
        );
    }
}
