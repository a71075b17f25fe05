//! The offline table of the reference, row by row, on a real database.

use super::tests::{answer, config, pod_list, req};
use super::*;
use serde_json::json;

#[tokio::test]
async fn offline_table() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let kubelet_pods = req("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1");
    let (status, body) = answer(&cache, "kubelet", &kubelet_pods, b"");
    assert_eq!(
        (status, body["reason"].as_str()),
        (404, Some("NotFound")),
        "nothing cached"
    );
    cache
        .record_response("kubelet", &kubelet_pods, pod_list(3, &[]))
        .await
        .unwrap();
    assert_eq!(
        answer(&cache, "kubelet", &kubelet_pods, b"").0,
        404,
        "empty pod list guard"
    );
    let proxy_svc = req("GET", "/api/v1/services");
    assert_eq!(
        answer(&cache, "kube-proxy", &proxy_svc, b"").0,
        503,
        "never listed"
    );
    let empty = json!({"kind": "ServiceList", "apiVersion": "v1", "metadata": {"resourceVersion": "4"}, "items": []});
    cache
        .record_response("kube-proxy", &proxy_svc, Bytes::from(empty.to_string()))
        .await
        .unwrap();
    let (status, body) = answer(&cache, "kube-proxy", &proxy_svc, b"");
    assert_eq!(
        (status, body["kind"].as_str()),
        (200, Some("ServiceList")),
        "empty list is fine"
    );

    assert_eq!(
        cache.offline_answer("kubelet", &req("GET", "/api/v1/pods?watch=1"), b""),
        OfflineAnswer::HoldWatch
    );
    let bad_selector = req("GET", "/api/v1/pods?labelSelector=app+in+web");
    let (status, body) = answer(&cache, "kubelet", &bad_selector, b"");
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("app in web"),
        "{body}"
    );

    let delete = req("DELETE", "/api/v1/namespaces/d/pods/a");
    let (status, body) = answer(&cache, "kubelet", &delete, b"");
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("ServiceUnavailable"))
    );
    assert!(body["message"].as_str().unwrap().contains("offline mode"));
    let create = req("POST", "/api/v1/namespaces/d/configmaps");
    assert_eq!(answer(&cache, "kubelet", &create, b"{}").0, 503);
    let event_body = br#"{"kind":"Event","metadata":{"generateName":"x"}}"#;
    let (status, body) = answer(
        &cache,
        "kubelet",
        &req("POST", "/api/v1/namespaces/d/events"),
        event_body,
    );
    assert_eq!((status, body["kind"].as_str()), (201, Some("Event")));
    assert_eq!(
        answer(
            &cache,
            "kubelet",
            &req("GET", "/api/v1/namespaces/d/pods/a/log"),
            b""
        )
        .0,
        503
    );

    let version = req("GET", "/version");
    assert_eq!(answer(&cache, "kubelet", &version, b"").0, 503);
    cache
        .record_response(
            "kubelet",
            &version,
            Bytes::from_static(b"{\"gitVersion\":\"v1.30.0\"}"),
        )
        .await
        .unwrap();
    let (status, body) = answer(&cache, "kubelet", &version, b"");
    assert_eq!(
        (status, body["gitVersion"].as_str()),
        (200, Some("v1.30.0"))
    );
    let bad = cache
        .record_response("kubelet", &version, Bytes::from_static(b"<html>"))
        .await;
    assert!(matches!(bad, Err(CacheError::BadJson { .. })));
}

#[tokio::test]
async fn lease_and_node_status_are_acknowledged_from_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let lease_path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1";
    let lease = |rv: &str, renew: &str| {
        json!({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
               "metadata": {"name": "n1", "namespace": "kube-node-lease", "resourceVersion": rv},
               "spec": {"holderIdentity": "n1", "renewTime": renew}})
    };
    let put = req("PUT", lease_path);
    let new_lease = lease("7", "t2").to_string();
    assert_eq!(
        answer(&cache, "kubelet", &put, new_lease.as_bytes()).0,
        503,
        "nothing cached"
    );
    cache
        .record_response(
            "kubelet",
            &req("GET", lease_path),
            Bytes::from(lease("7", "t1").to_string()),
        )
        .await
        .unwrap();
    let (status, body) = answer(&cache, "kubelet", &put, new_lease.as_bytes());
    assert_eq!(
        (status, body["spec"]["renewTime"].as_str()),
        (200, Some("t2"))
    );
    // The acknowledged lease is stored (best effort, through the writer).
    let mut renewed = None;
    for _ in 0..200 {
        let (_, got) = answer(&cache, "kubelet", &req("GET", lease_path), b"");
        renewed = got["spec"]["renewTime"].as_str().map(str::to_string);
        if renewed.as_deref() == Some("t2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(renewed.as_deref(), Some("t2"));

    let node = json!({"kind": "Node", "apiVersion": "v1",
        "metadata": {"name": "n1", "resourceVersion": "3"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    cache
        .record_response(
            "kubelet",
            &req("GET", "/api/v1/nodes/n1"),
            Bytes::from(node.to_string()),
        )
        .await
        .unwrap();
    let patch = req("PATCH", "/api/v1/nodes/n1/status");
    let (status, body) = answer(
        &cache,
        "kubelet",
        &patch,
        br#"{"status":{"phase":"Pending","x":null}}"#,
    );
    assert_eq!(
        (status, body["status"]["phase"].as_str()),
        (200, Some("Pending"))
    );
    assert_eq!(
        body["status"]["conditions"][0]["type"], "Ready",
        "merge patch keeps the rest"
    );
    let smp = br#"{"status":{"$setElementOrder/conditions":[{"type":"Ready"}]}}"#;
    let (status, body) = answer(&cache, "kubelet", &patch, smp);
    assert_eq!(status, 200);
    assert!(
        body["status"].get("$setElementOrder/conditions").is_none(),
        "directives not applied"
    );
    let other_lease = req(
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/default/leases/n1",
    );
    assert_eq!(
        answer(&cache, "kubelet", &other_lease, new_lease.as_bytes()).0,
        503
    );
}

#[tokio::test]
async fn namespace_objects_are_found_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let get = req("GET", "/api/v1/namespaces/kube-system");
    let ns = json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "kube-system", "resourceVersion": "4"}});
    cache
        .record_response("kubelet", &get, Bytes::from(ns.to_string()))
        .await
        .unwrap();
    let (status, body) = answer(&cache, "kubelet", &get, b"");
    assert_eq!((status, body["kind"].as_str()), (200, Some("Namespace")));
}
