//! The offline table of the reference, row by row, on a real database.

use super::tests::{answer, config, pod_list, req};
use super::*;
use serde_json::{json, Value};

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
    let patch = req("PATCH", "/api/v1/nodes/n1/status")
        .with_content_type(Some("application/merge-patch+json"));
    let (status, body) = write(
        &cache,
        &patch,
        br#"{"status":{"phase":"Pending","x":null}}"#,
    )
    .await;
    assert_eq!(
        (status, body["status"]["phase"].as_str()),
        (200, Some("Pending"))
    );
    assert_eq!(
        body["status"]["conditions"][0]["type"], "Ready",
        "merge patch keeps the rest"
    );
    let smp_patch = req("PATCH", "/api/v1/nodes/n1/status").with_content_type(Some(
        "application/strategic-merge-patch+json; charset=utf-8",
    ));
    let smp = br#"{"status":{"$setElementOrder/conditions":[{"type":"Ready"}],
                   "conditions":[{"type":"Ready","status":"False"}]}}"#;
    let (status, body) = write(&cache, &smp_patch, smp).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["status"]["conditions"],
        json!([{"type": "Ready", "status": "False"}]),
        "merged by type, directive applied: {body}"
    );
    assert_eq!(
        body["status"]["phase"], "Pending",
        "the merge patch was kept"
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

fn recorded_pod() -> Value {
    let path = format!(
        "{}/testdata/recorded/pod-minikube.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const POD_STATUS: &str = "/api/v1/namespaces/default/pods/queue-l4dv8/status";
const SMP: &str = "application/strategic-merge-patch+json";

/// An offline write as the node proxy answers it: once its result is durable.
async fn write(cache: &AutonomyCache, r: &RequestInfo, body: &[u8]) -> (u16, Value) {
    match cache.offline_answer_durable("kubelet", r, body).await {
        OfflineAnswer::Respond { status, body } => (status, serde_json::from_slice(&body).unwrap()),
        OfflineAnswer::HoldWatch => panic!("unexpected HoldWatch for {}", r.path),
    }
}

#[tokio::test]
async fn pod_status_patch_offline_is_read_back_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let list = req("GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dminikube");
    let pod = recorded_pod();
    cache
        .record_response(
            "kubelet",
            &list,
            pod_list(550090, std::slice::from_ref(&pod)),
        )
        .await
        .unwrap();
    // What kubelet's status manager sends when the container died: Ready and
    // ContainersReady by type, the whole containerStatuses list; it also tries to
    // move the pod (ignored: only status, labels and annotations pass /status).
    let patch = json!({
        "metadata": {"uid": "d8aa9a47-ad0f-4bbe-bc12-ab31605d3211", "labels": {"offline": "yes"}},
        "spec": {"nodeName": "elsewhere"},
        "status": {
            "$setElementOrder/conditions": [{"type": "Initialized"}, {"type": "Ready"},
                                            {"type": "ContainersReady"}, {"type": "PodScheduled"}],
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                 "lastTransitionTime": "2022-12-23T10:01:02Z"},
                {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady",
                 "lastTransitionTime": "2022-12-23T10:01:02Z"}
            ],
            "containerStatuses": [{"name": "queue", "ready": false, "restartCount": 1,
                "image": "gcr.io/kuar-demo/kuard-amd64:1", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {}}]
        }
    });
    let patch_req = req("PATCH", POD_STATUS).with_content_type(Some(SMP));
    let (code, body) = write(&cache, &patch_req, patch.to_string().as_bytes()).await;
    assert_eq!(code, 200, "{body}");
    let mut expected = pod.clone();
    for c in &mut expected["status"]["conditions"].as_array_mut().unwrap()[1..3] {
        c["status"] = json!("False");
        c["reason"] = json!("ContainersNotReady");
        c["lastTransitionTime"] = json!("2022-12-23T10:01:02Z");
    }
    expected["status"]["containerStatuses"] = patch["status"]["containerStatuses"].clone();
    expected["metadata"]["labels"]["offline"] = json!("yes");
    assert_eq!(
        body, expected,
        "the pod as kube-apiserver answers the patch"
    );

    let get = req("GET", "/api/v1/namespaces/default/pods/queue-l4dv8");
    let (code, got) = answer(&cache, "kubelet", &get, b"");
    assert_eq!((code, &got), (200, &expected), "offline get");
    let (code, listed) = answer(&cache, "kubelet", &list, b"");
    assert_eq!(code, 200);
    assert_eq!(
        listed["items"][0], expected,
        "offline list by kubelet's selector"
    );

    drop(cache);
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let (code, got) = answer(&cache, "kubelet", &get, b"");
    assert_eq!((code, &got), (200, &expected), "after a restart");
    let (_, listed) = answer(&cache, "kubelet", &list, b"");
    assert_eq!(listed["items"][0], expected, "list after a restart");

    // A second patch (recovery) applies to the stored result.
    let recover = json!({"status": {"conditions": [
        {"type": "Ready", "status": "True", "reason": null}]}});
    let (code, body) = write(&cache, &patch_req, recover.to_string().as_bytes()).await;
    assert_eq!(code, 200);
    let mut ready = pod["status"]["conditions"][1].clone();
    ready["lastTransitionTime"] = json!("2022-12-23T10:01:02Z");
    assert_eq!(
        body["status"]["conditions"][1], ready,
        "reason deleted by null"
    );
}

#[tokio::test]
async fn offline_writes_are_decoded_by_content_type() {
    let dir = tempfile::tempdir().unwrap();
    let cache = AutonomyCache::open(config(dir.path())).unwrap();
    let get = req("GET", "/api/v1/namespaces/default/pods/queue-l4dv8");
    let pod = recorded_pod();
    cache
        .record_response("kubelet", &get, Bytes::from(pod.to_string()))
        .await
        .unwrap();
    let body = br#"{"status":{"phase":"Failed"}}"#;
    let with = |method: &str, media: Option<&str>| req(method, POD_STATUS).with_content_type(media);
    let cases = [
        (with("PATCH", None), 415, "UnsupportedMediaType"),
        (
            with("PATCH", Some("application/yaml")),
            415,
            "UnsupportedMediaType",
        ),
        (
            with("PATCH", Some("application/apply-patch+yaml")),
            503,
            "ServiceUnavailable",
        ),
        (
            with("PUT", Some("application/vnd.kubernetes.protobuf")),
            415,
            "UnsupportedMediaType",
        ),
    ];
    for (r, code, reason) in cases {
        let (got, status) = write(&cache, &r, body).await;
        assert_eq!(
            (got, status["reason"].as_str()),
            (code, Some(reason)),
            "{r:?}: {status}"
        );
    }
    let json_patch = br#"[{"op":"test","path":"/status/phase","value":"Running"},
                          {"op":"replace","path":"/status/phase","value":"Failed"}]"#;
    let (code, patched) = write(
        &cache,
        &with("PATCH", Some("application/json-patch+json")),
        json_patch,
    )
    .await;
    assert_eq!(
        (code, patched["status"]["phase"].as_str()),
        (200, Some("Failed"))
    );
    let merge = with("PATCH", Some("application/merge-patch+json"));
    let (code, _) = write(&cache, &merge, br#"{"status":{"phase":"Unknown"}}"#).await;
    assert_eq!(code, 200);

    let mut other_uid = pod.clone();
    other_uid["metadata"]["uid"] = json!("someone-else");
    let (code, status) = write(&cache, &with("PUT", None), other_uid.to_string().as_bytes()).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (422, Some("Invalid")),
        "{status}"
    );
    let mut stale = pod.clone();
    stale["metadata"]["resourceVersion"] = json!("1");
    let (code, status) = write(&cache, &with("PUT", None), stale.to_string().as_bytes()).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (409, Some("Conflict")),
        "{status}"
    );
    let mut put = pod.clone();
    put["status"]["phase"] = json!("Succeeded");
    put["status"].as_object_mut().unwrap().remove("qosClass");
    put["spec"]["nodeName"] = json!("elsewhere");
    let (code, body) = write(
        &cache,
        &with("PUT", Some("application/json")),
        put.to_string().as_bytes(),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(body["status"]["phase"], "Succeeded");
    assert_eq!(body["spec"]["nodeName"], "minikube", "spec stays as cached");
    assert_eq!(
        body["status"]["qosClass"], "BestEffort",
        "QoS class backfilled"
    );

    let bad = with("PATCH", Some(SMP));
    let (code, status) = write(
        &cache,
        &bad,
        br#"{"status":{"conditions":[{"status":"x"}]}}"#,
    )
    .await;
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
    assert!(
        status["message"].as_str().unwrap().contains("merge key"),
        "{status}"
    );
    // Pods themselves (not /status) stay read-only offline.
    let spec =
        req("PATCH", "/api/v1/namespaces/default/pods/queue-l4dv8").with_content_type(Some(SMP));
    let move_it = br#"{"spec":{"nodeName":"x"}}"#;
    assert_eq!(write(&cache, &spec, move_it).await.0, 503);
}
