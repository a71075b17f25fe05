//! The fake kube-apiserver (`integration::k8s`) against the apiserver behaviour the node
//! proxy relies on: JSON shapes, selectors, watch replay and 410, faults, churn, TLS with
//! client certificates, and the cuttable link relay.

use std::time::{Duration, Instant};

use hyper::Method;
use integration::k8s::{
    ApiClient, ApiserverPki, FakeApiserver, FakeApiserverOptions, Fault, LinkRelay, Res,
};
use serde_json::{json, Value};

const EVENT_WAIT: Duration = Duration::from_secs(5);

async fn plain() -> (FakeApiserver, ApiClient) {
    let api = FakeApiserver::start(FakeApiserverOptions::default())
        .await
        .unwrap_or_else(|e| panic!("start: {e}"));
    let client = ApiClient::plain(api.addr());
    (api, client)
}

fn pod(ns: &str, name: &str, node: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node}, "status": {"phase": "Running"}})
}

async fn get_json(client: &ApiClient, path: &str) -> (u16, Value) {
    let resp = client
        .get(path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let body = resp
        .json()
        .unwrap_or_else(|e| panic!("GET {path}: {e}: {:?}", resp.body));
    (resp.status, body)
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn lists_objects_and_errors_have_apiserver_shapes() {
    let (api, client) = plain().await;
    let rv = api.upsert(
        &Res::pods(),
        pod("ns", "p1", "edge-1", json!({"app": "web"})),
    );
    let (status, obj) = get_json(&client, "/api/v1/namespaces/ns/pods/p1").await;
    assert_eq!(status, 200);
    assert_eq!(
        (obj["kind"].as_str(), obj["apiVersion"].as_str()),
        (Some("Pod"), Some("v1"))
    );
    assert_eq!(obj["metadata"]["resourceVersion"], rv.to_string());
    assert!(obj["metadata"]["uid"].is_string() && obj["metadata"]["creationTimestamp"].is_string());

    let (status, list) = get_json(&client, "/api/v1/pods").await;
    assert_eq!(status, 200);
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(
        list["metadata"]["resourceVersion"],
        api.current_rv().to_string()
    );
    assert_eq!(names(&list), ["p1"]);
    assert!(
        list["items"][0].get("kind").is_none(),
        "list items carry no kind"
    );

    let (status, missing) = get_json(&client, "/api/v1/namespaces/ns/pods/x").await;
    assert_eq!(status, 404);
    assert_eq!(
        missing,
        json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"pods \"x\" not found","reason":"NotFound",
            "details":{"name":"x","kind":"pods"},"code":404})
    );
    let (status, _) = get_json(&client, "/apis/apps/v1/deployments").await;
    assert_eq!(status, 404);

    let (_, groups) = get_json(&client, "/apis").await;
    assert_eq!(groups["kind"], "APIGroupList");
    let (_, leases) = get_json(&client, "/apis/coordination.k8s.io/v1").await;
    assert_eq!(leases["groupVersion"], "coordination.k8s.io/v1");
    let (_, version) = get_json(&client, "/version").await;
    assert!(version["gitVersion"].is_string());
    let ready = client
        .get("/readyz")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((ready.status, &ready.body[..]), (200, &b"ok"[..]));

    let recorded = api.requests();
    assert!(recorded.iter().any(|r| r.path_and_query == "/api/v1/pods"
        && r.user_agent.as_deref() == Some("integration-test/v0.0.0")));
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists() {
    let (api, client) = plain().await;
    api.upsert(
        &Res::pods(),
        pod(
            "a",
            "web-1",
            "edge-1",
            json!({"app": "web", "tier": "front"}),
        ),
    );
    api.upsert(
        &Res::pods(),
        pod(
            "a",
            "web-2",
            "edge-2",
            json!({"app": "web", "tier": "back"}),
        ),
    );
    api.upsert(
        &Res::pods(),
        pod("b", "db-1", "edge-1", json!({"app": "db"})),
    );
    api.upsert(&Res::pods(), pod("b", "bare", "", json!({})));
    let cases: &[(&str, &[&str])] = &[
        ("labelSelector=app%3Dweb", &["web-1", "web-2"]),
        ("labelSelector=app%3D%3Dweb", &["web-1", "web-2"]),
        ("labelSelector=app%21%3Dweb", &["bare", "db-1"]),
        (
            "labelSelector=app+in+%28db%2Cweb%29",
            &["db-1", "web-1", "web-2"],
        ),
        ("labelSelector=app+notin+%28web%29", &["bare", "db-1"]),
        ("labelSelector=tier", &["web-1", "web-2"]),
        ("labelSelector=%21tier", &["bare", "db-1"]),
        ("labelSelector=app%3Dweb%2Ctier%3Dback", &["web-2"]),
        ("fieldSelector=spec.nodeName%3Dedge-1", &["db-1", "web-1"]),
        ("fieldSelector=spec.nodeName%3D", &["bare"]),
        ("fieldSelector=metadata.namespace%21%3Da", &["bare", "db-1"]),
        ("fieldSelector=metadata.name%3D%3Dweb-2", &["web-2"]),
        (
            "fieldSelector=status.phase%3DRunning%2Cspec.nodeName%21%3Dedge-1",
            &["bare", "web-2"],
        ),
        (
            "labelSelector=app%3Dweb&fieldSelector=spec.nodeName%3Dedge-2",
            &["web-2"],
        ),
    ];
    for (query, want) in cases {
        let (status, list) = get_json(&client, &format!("/api/v1/pods?{query}")).await;
        assert_eq!(status, 200, "{query}");
        let mut got = names(&list);
        got.sort();
        assert_eq!(got, *want, "{query}");
    }
    let (status, ns) = get_json(&client, "/api/v1/namespaces/b").await;
    assert_eq!(
        (status, ns["kind"].as_str()),
        (200, Some("Namespace")),
        "namespace created"
    );
    let (_, ns_b) = get_json(&client, "/api/v1/namespaces/b/pods?labelSelector=app").await;
    assert_eq!(names(&ns_b), ["db-1"]);
    let (status, bad) = get_json(&client, "/api/v1/pods?labelSelector=app+in+web").await;
    assert_eq!((status, bad["reason"].as_str()), (400, Some("BadRequest")));
}

#[tokio::test]
async fn watch_replays_streams_live_and_expires_old_versions() {
    let (api, client) = plain().await;
    let res = Res::configmaps();
    let rv1 = api.upsert(&res, json!({"metadata": {"name": "a", "namespace": "ns"}}));
    api.upsert(&res, json!({"metadata": {"name": "b", "namespace": "ns"}}));
    api.upsert(
        &res,
        json!({"metadata": {"name": "a", "namespace": "ns"}, "data": {"k": "v"}}),
    );

    let path = format!(
        "/api/v1/namespaces/ns/configmaps?watch=1&resourceVersion={rv1}&allowWatchBookmarks=true"
    );
    let mut w = client.watch(&path).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(w.status, 200);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let ev = w.next(EVENT_WAIT).await.unwrap_or_else(|e| panic!("{e}"));
        let ev = ev.unwrap_or_else(|| panic!("stream ended"));
        seen.push(format!(
            "{} {}",
            ev["type"].as_str().unwrap_or(""),
            ev["object"]["metadata"]["name"].as_str().unwrap_or("")
        ));
        assert_eq!(ev["object"]["kind"], "ConfigMap");
    }
    assert_eq!(seen, ["ADDED b", "MODIFIED a"]);
    let rv_del = api
        .delete(&res, Some("ns"), "b")
        .unwrap_or_else(|| panic!("b vanished"));
    let ev = w
        .until(EVENT_WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ev["type"], "DELETED");
    assert_eq!(
        ev["object"]["metadata"]["resourceVersion"],
        rv_del.to_string()
    );
    api.emit_bookmark(&res);
    let ev = w
        .until(EVENT_WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ev["type"], "BOOKMARK");
    assert_eq!(
        ev["object"]["metadata"]["resourceVersion"],
        api.current_rv().to_string()
    );

    // rv unset: the current objects first, as ADDED.
    let mut fresh = client
        .watch("/api/v1/namespaces/ns/configmaps?watch=true")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ev = fresh
        .until(EVENT_WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            ev["type"].as_str(),
            ev["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("a"))
    );

    api.compact(api.current_rv());
    let mut old = client.watch(&path).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(old.status, 200);
    let ev = old
        .until(EVENT_WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
    let list = client
        .get(&format!(
            "/api/v1/configmaps?resourceVersion={rv1}&resourceVersionMatch=Exact"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(list.status, 410);
}

#[tokio::test]
async fn watch_follows_selectors_and_closes_at_timeout() {
    let (api, client) = plain().await;
    api.upsert(
        &Res::pods(),
        pod("ns", "p", "edge-1", json!({"app": "web"})),
    );
    let started = Instant::now();
    let mut w = client
        .watch("/api/v1/pods?watch=1&labelSelector=app%3Dweb&timeoutSeconds=2")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let first = w
        .until(EVENT_WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first["type"], "ADDED");
    api.upsert(&Res::pods(), pod("ns", "p", "edge-1", json!({"app": "db"})));
    let left = w
        .until(EVENT_WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        left["type"], "DELETED",
        "leaving the selection reads as a delete"
    );
    assert_eq!(left["object"]["metadata"]["labels"]["app"], "web");
    let end = w
        .next(Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(end.is_none(), "stream should close at timeoutSeconds");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[tokio::test]
async fn writes_conflict_patch_and_delete_like_the_apiserver() {
    let (api, client) = plain().await;
    let path = "/apis/example.com/v1/namespaces/ns/widgets";
    let body = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {"size": 1}});
    let created = client
        .request(Method::POST, path, Some("application/json"), Some(&body))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(created.status, 201);
    let again = client
        .request(Method::POST, path, Some("application/json"), Some(&body))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.status, 409);
    let obj = created.json().unwrap_or_else(|e| panic!("{e}"));
    let mut stale = obj.clone();
    stale["spec"]["size"] = json!(2);
    let one = format!("{path}/w");
    let ok = client
        .request(Method::PUT, &one, Some("application/json"), Some(&stale))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.status, 200);
    stale["spec"]["size"] = json!(3);
    let conflict = client
        .request(Method::PUT, &one, Some("application/json"), Some(&stale))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(conflict.status, 409);
    assert_eq!(
        conflict.json().map(|s| s["reason"].clone()).ok(),
        Some(json!("Conflict"))
    );
    let patch = json!({"metadata": {"labels": {"x": "y"}}, "status": {"ready": true}});
    let patched = client
        .request(
            Method::PATCH,
            &format!("{one}/status"),
            Some("application/merge-patch+json"),
            Some(&patch),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(patched.status, 200);
    let stored = api
        .get(&Res::widgets(), Some("ns"), "w")
        .unwrap_or_default();
    assert_eq!(stored["status"]["ready"], true);
    assert!(
        stored["metadata"].get("labels").is_none(),
        "a status patch only touches status"
    );
    // Strategic merge patches follow the node proxy's rules: pod conditions merge by type.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
        "status": {"conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}]}});
    api.upsert(&Res::pods(), pod);
    let smp = json!({"status": {"$setElementOrder/conditions": [{"type": "Initialized"}, {"type": "Ready"}],
        "conditions": [{"type": "Ready", "status": "False"}]}});
    let patched = client
        .request(
            Method::PATCH,
            "/api/v1/namespaces/ns/pods/p/status",
            Some("application/strategic-merge-patch+json"),
            Some(&smp),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(patched.status, 200);
    let conditions =
        patched.json().unwrap_or_else(|e| panic!("{e}"))["status"]["conditions"].clone();
    assert_eq!(
        conditions,
        json!([{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "False"}])
    );
    let json_patch = client
        .request(
            Method::PATCH,
            &one,
            Some("application/json-patch+json"),
            Some(&json!([])),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json_patch.status, 415);
    let deleted = client
        .request(Method::DELETE, &one, None, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(deleted.status, 200);
    assert!(api.get(&Res::widgets(), Some("ns"), "w").is_none());
}

#[tokio::test]
async fn faults_break_requests_as_configured() {
    let (api, client) = plain().await;
    api.set_fault(Fault::Status {
        path_prefix: "/api/v1/nodes".into(),
        code: 503,
        reason: "ServiceUnavailable".into(),
    });
    let (status, body) = get_json(&client, "/api/v1/nodes").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("ServiceUnavailable"))
    );
    assert_eq!(get_json(&client, "/api/v1/pods").await.0, 200);

    api.set_fault(Fault::MalformedJson {
        path_prefix: String::new(),
    });
    let resp = client
        .get("/api/v1/pods")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status, 200);
    assert!(resp.json().is_err());

    let bytes = 8 * 1024 * 1024;
    api.set_fault(Fault::HugeBody {
        path_prefix: "/api".into(),
        bytes,
    });
    let resp = client
        .get("/api/v1/pods")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.body.len() as u64, bytes);

    api.set_fault(Fault::Delay {
        path_prefix: "/version".into(),
        dur: Duration::from_millis(600),
    });
    let started = Instant::now();
    assert_eq!(get_json(&client, "/version").await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(600));

    api.set_fault(Fault::WatchNeverEnds);
    api.add_fault(Fault::Status {
        path_prefix: "/version".into(),
        code: 429,
        reason: "TooManyRequests".into(),
    });
    assert_eq!(get_json(&client, "/version").await.0, 429, "faults stack");
    let mut w = client
        .watch("/api/v1/pods?watch=1&timeoutSeconds=1")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let outcome = w.next(Duration::from_secs(3)).await;
    assert!(
        outcome.is_err(),
        "the watch should still be open: {outcome:?}"
    );
    api.set_fault(Fault::None);
}

#[tokio::test]
async fn churn_writes_at_roughly_the_asked_rate() {
    let (api, client) = plain().await;
    let mut w = client
        .watch("/api/v1/namespaces/churn/configmaps?watch=1")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let churn = api.spawn_churn(&Res::configmaps(), "churn", 5, 1000);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = churn.stop();
    let secs = started.elapsed().as_secs_f64();
    let modified = events.iter().filter(|e| !e.created).count() as f64;
    assert_eq!(events.iter().filter(|e| e.created).count(), 5);
    assert!(
        modified <= secs * 1000.0 + 1.0 && modified >= (secs - 0.5) * 1000.0,
        "{modified} modifications in {secs:.2} s at 1000/s"
    );
    let rvs: Vec<u64> = events.iter().map(|e| e.rv).collect();
    assert!(
        rvs.windows(2).all(|p| p[0] < p[1]),
        "resourceVersions increase"
    );
    for want in &events {
        let rv = want.rv.to_string();
        let ev = w
            .until(EVENT_WAIT, |ev| {
                ev["object"]["metadata"]["resourceVersion"].as_str() == Some(rv.as_str())
            })
            .await
            .unwrap_or_else(|e| panic!("rv {}: {e}", want.rv));
        assert_eq!(ev["object"]["metadata"]["name"], want.name.as_str());
    }
}

/// A TLS fake apiserver requiring client certificates, and one client certificate for it.
struct TlsApi {
    pki: ApiserverPki,
    api: FakeApiserver,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsApi {
    async fn start(cn: &str, org: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let pki = ApiserverPki::generate(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let (cert, key) = pki
            .client("client", cn, Some(org))
            .unwrap_or_else(|e| panic!("{e}"));
        let api = FakeApiserver::start(FakeApiserverOptions {
            tls: Some(pki.server_tls(true)),
            ..FakeApiserverOptions::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        Self {
            pki,
            api,
            cert,
            key,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn tls_with_client_certificates_records_the_cn() {
    let TlsApi {
        pki,
        api,
        cert,
        key,
        _dir,
    } = TlsApi::start("system:node:edge-1", "system:nodes").await;
    assert!(api.url().starts_with("https://127.0.0.1:"));
    let client = ApiClient::tls(api.addr(), &pki.ca_cert(), Some((&cert, &key)))
        .unwrap_or_else(|e| panic!("{e}"))
        .with_user_agent("kubelet/v1.31.0 (linux/amd64)");
    let (status, _) = get_json(&client, "/api/v1/nodes").await;
    assert_eq!(status, 200);
    let seen = api.requests();
    assert_eq!(
        seen.last().and_then(|r| r.client_cn.clone()).as_deref(),
        Some("system:node:edge-1")
    );
    let in_cluster = ApiClient::tls(api.addr(), &pki.ca_cert(), Some((&cert, &key)))
        .and_then(|c| c.with_server_name("kubernetes.default.svc"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get_json(&in_cluster, "/version").await.0, 200);
    let wrong_name = ApiClient::tls(api.addr(), &pki.ca_cert(), Some((&cert, &key)))
        .and_then(|c| c.with_server_name("elsewhere.example"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wrong_name.get("/version").await.is_err(),
        "SANs are checked"
    );
    let anonymous =
        ApiClient::tls(api.addr(), &pki.ca_cert(), None).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        anonymous.get("/api/v1/nodes").await.is_err(),
        "client cert is required"
    );
}

#[tokio::test]
async fn link_relay_cut_blackholes_and_restore_recovers() {
    let (api, _) = plain().await;
    let relay = LinkRelay::start(api.addr())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = ApiClient::plain(relay.addr());
    let impatient = client.clone().with_timeout(Duration::from_millis(1500));
    assert_eq!(get_json(&client, "/version").await.0, 200);
    let mut w = client
        .watch("/api/v1/pods?watch=1")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    relay.cut();
    let started = Instant::now();
    let cut = impatient.get("/version").await;
    assert!(
        matches!(cut, Err(integration::k8s::ClientError::Timeout(_))),
        "{cut:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(1400));
    api.upsert(&Res::pods(), pod("ns", "during-cut", "n", json!({})));
    let silent = w.next(Duration::from_millis(800)).await;
    assert!(
        matches!(silent, Err(integration::k8s::ClientError::Timeout(_))),
        "{silent:?}"
    );

    relay.restore();
    assert_eq!(get_json(&client, "/version").await.0, 200);
    let closed = w.next(Duration::from_secs(3)).await;
    assert!(
        matches!(
            closed,
            Ok(None) | Err(integration::k8s::ClientError::Http(_))
        ),
        "{closed:?}"
    );

    let mut w2 = client
        .watch("/api/v1/pods?watch=1")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    relay.reset_all();
    let reset = w2.next(Duration::from_secs(3)).await;
    assert!(
        !matches!(reset, Err(integration::k8s::ClientError::Timeout(_))),
        "{reset:?}"
    );
}

#[tokio::test]
async fn watch_list_sends_initial_events_and_watches_can_be_ended() {
    let (api, client) = plain().await;
    api.upsert(
        &Res::leases(),
        json!({"metadata": {"name": "edge-1", "namespace": "kube-node-lease"}}),
    );
    let path = "/apis/coordination.k8s.io/v1/leases?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true";
    let mut w = client.watch(path).await.unwrap_or_else(|e| panic!("{e}"));
    let added = w
        .until(EVENT_WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (added["type"].as_str(), added["object"]["kind"].as_str()),
        (Some("ADDED"), Some("Lease"))
    );
    let end = w
        .until(EVENT_WAIT, |_| true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert_eq!(
        end["object"]["metadata"]["resourceVersion"],
        api.current_rv().to_string()
    );
    let refused = client
        .get("/api/v1/pods?watch=1&sendInitialEvents=true")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status, 400, "watch-list needs allowWatchBookmarks");

    assert_eq!(api.active_watches(), 1);
    api.end_watches();
    let closed = w.next(EVENT_WAIT).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        closed.is_none(),
        "end_watches closes the stream: {closed:?}"
    );
    let deadline = Instant::now() + EVENT_WAIT;
    while api.active_watches() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(api.active_watches(), 0);
}

#[tokio::test]
async fn link_relay_rate_limit_slows_transfers() {
    let (api, _) = plain().await;
    let relay = LinkRelay::start(api.addr())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = ApiClient::plain(relay.addr()).with_timeout(Duration::from_secs(15));
    let bytes = 300_000;
    api.set_fault(Fault::HugeBody {
        path_prefix: "/api/v1/pods".into(),
        bytes,
    });
    relay.set_rate_limit(Some(200_000));
    let started = Instant::now();
    let resp = client
        .get("/api/v1/pods")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let took = started.elapsed();
    assert_eq!(resp.body.len() as u64, bytes);
    assert!(
        took >= Duration::from_millis(1200),
        "300 kB at 200 kB/s took {took:?}"
    );
    relay.set_rate_limit(None);
    let started = Instant::now();
    let resp = client
        .get("/api/v1/pods")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.body.len() as u64, bytes);
    assert!(started.elapsed() < took, "unlimited is faster");
}

#[tokio::test]
async fn bad_requests_get_the_apiserver_status_codes() {
    let (api, client) = plain().await;
    let node = json!({"metadata": {"name": "edge-1"}});
    api.upsert(&Res::nodes(), node.clone());
    let status = |resp: Result<integration::k8s::ApiResponse, _>| match resp {
        Ok(r) => (
            r.status,
            r.json().map(|s| s["reason"].clone()).unwrap_or_default(),
        ),
        Err(e) => panic!("{e}"),
    };
    let nodes = "/api/v1/nodes";
    let huge = json!({"metadata": {"name": "big"}, "data": "x".repeat(4 * 1024 * 1024)});
    let post = |body: Value| {
        let client = client.clone();
        async move {
            client
                .request(Method::POST, nodes, Some("application/json"), Some(&body))
                .await
        }
    };
    assert_eq!(
        status(post(huge).await),
        (413, json!("RequestEntityTooLarge"))
    );
    assert_eq!(
        status(post(node.clone()).await),
        (409, json!("AlreadyExists"))
    );
    let protobuf = client
        .request(
            Method::POST,
            "/api/v1/namespaces/ns/configmaps",
            Some("application/vnd.kubernetes.protobuf"),
            Some(&json!({})),
        )
        .await;
    assert_eq!(status(protobuf), (415, json!("UnsupportedMediaType")));
    assert_eq!(
        status(post(json!({"metadata": {}})).await),
        (400, json!("BadRequest"))
    );
    let renamed = client
        .request(
            Method::PUT,
            "/api/v1/nodes/other",
            Some("application/json"),
            Some(&node),
        )
        .await;
    assert_eq!(status(renamed), (400, json!("BadRequest")));
    let collection = client.request(Method::DELETE, nodes, None, None).await;
    assert_eq!(status(collection), (405, json!("MethodNotAllowed")));
    let ahead = format!("{nodes}?resourceVersion={}", api.current_rv() + 100);
    assert_eq!(status(client.get(&ahead).await), (504, json!("Timeout")));
    assert_eq!(
        status(client.get("/api/v1/nodes/edge-1/proxy").await).0,
        404
    );
    assert_eq!(
        status(client.get("/api/v1/namespaces/ns/nodes").await).0,
        404
    );

    // A watch of one named object, via the legacy /watch/ path.
    let mut w = client
        .watch("/api/v1/watch/nodes/edge-1?resourceVersion=0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    api.upsert(&Res::nodes(), json!({"metadata": {"name": "edge-2"}}));
    api.upsert(
        &Res::nodes(),
        json!({"metadata": {"name": "edge-1", "labels": {"a": "b"}}}),
    );
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let ev = w
            .until(EVENT_WAIT, |_| true)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ev["object"]["metadata"]["name"], "edge-1");
        kinds.push(ev["type"].as_str().unwrap_or("").to_owned());
    }
    assert_eq!(kinds, ["ADDED", "MODIFIED"]);
}

/// Runs kubectl (real client-go) against `kubeconfig`: (exit code, stdout, stderr).
fn kubectl(
    bin: &std::path::Path,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> (i32, String, String) {
    let out = std::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// kubectl from `$KUBECTL` or PATH, if there is one.
fn find_kubectl() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return Some(path.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("kubectl"))
        .find(|p| p.is_file())
}

/// The fake against a real client-go (kubectl over TLS with a client certificate):
/// discovery, tables, selectors, a custom resource, merge patches, delete, 404, watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_understands_the_fake_apiserver() {
    let Some(bin) = find_kubectl() else {
        eprintln!(
            "SKIPPED kubectl_understands_the_fake_apiserver: no kubectl on PATH or in $KUBECTL"
        );
        return;
    };
    let TlsApi {
        pki,
        api,
        cert,
        key,
        _dir: dir,
    } = TlsApi::start("kubernetes-admin", "system:masters").await;
    let cfg = dir.path().join("kubeconfig");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: admin\ncurrent-context: fake\n",
        api.url(),
        pki.ca_cert().display(),
        cert.display(),
        key.display()
    );
    std::fs::write(&cfg, kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    api.upsert(
        &Res::pods(),
        pod("ns", "web-1", "edge-1", json!({"app": "web"})),
    );
    api.upsert(
        &Res::pods(),
        pod("ns", "db-1", "edge-2", json!({"app": "db"})),
    );
    api.upsert(
        &Res::widgets(),
        json!({"metadata": {"name": "w1", "namespace": "ns"}}),
    );
    api.upsert(&Res::nodes(), json!({"metadata": {"name": "edge-1"}}));
    let run = |args: &'static [&'static str]| {
        let (bin, cfg) = (bin.clone(), cfg.clone());
        tokio::task::spawn_blocking(move || kubectl(&bin, &cfg, args))
    };
    let ok = |(code, out, err): (i32, String, String)| {
        assert_eq!(code, 0, "kubectl failed: {err}");
        out
    };
    let join = |r: Result<(i32, String, String), tokio::task::JoinError>| {
        r.unwrap_or_else(|e| panic!("{e}"))
    };

    let out = ok(join(run(&["get", "pods", "-A", "-o", "name"]).await));
    assert_eq!(out, "pod/db-1\npod/web-1\n");
    let out = ok(join(
        run(&["get", "pods", "-A", "-o", "name", "--chunk-size=1"]).await,
    ));
    assert_eq!(
        out, "pod/db-1\npod/web-1\n",
        "client-go follows continue tokens"
    );
    let out = ok(join(
        run(&["get", "pods", "-n", "ns", "-l", "app=web", "-o", "name"]).await,
    ));
    assert_eq!(out, "pod/web-1\n");
    let out = ok(join(
        run(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=edge-2",
            "-o",
            "name",
        ])
        .await,
    ));
    assert_eq!(out, "pod/db-1\n");
    let out = ok(join(
        run(&["get", "widgets", "-n", "ns", "-o", "name"]).await,
    ));
    assert_eq!(out, "widget.example.com/w1\n");
    let out = ok(join(run(&["api-resources", "-o", "name"]).await));
    assert!(
        out.contains("leases.coordination.k8s.io") && out.contains("widgets.example.com"),
        "{out}"
    );
    ok(join(run(&["get", "nodes"]).await));

    ok(join(
        run(&["label", "pod", "web-1", "-n", "ns", "x=y"]).await,
    ));
    let labelled = api
        .get(&Res::pods(), Some("ns"), "web-1")
        .unwrap_or_default();
    assert_eq!(labelled["metadata"]["labels"]["x"], "y");
    ok(join(run(&["annotate", "node", "edge-1", "k=v"]).await));
    let node = api.get(&Res::nodes(), None, "edge-1").unwrap_or_default();
    assert_eq!(node["metadata"]["annotations"]["k"], "v");
    ok(join(
        run(&["delete", "pod", "db-1", "-n", "ns", "--wait=false"]).await,
    ));
    assert!(api.get(&Res::pods(), Some("ns"), "db-1").is_none());
    let (code, _, err) = join(run(&["get", "pod", "db-1", "-n", "ns"]).await);
    assert_eq!(code, 1);
    assert!(err.contains("pods \"db-1\" not found"), "{err}");

    let watch = run(&[
        "get",
        "pods",
        "-n",
        "ns",
        "-w",
        "-o",
        "name",
        "--request-timeout=4s",
    ]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.upsert(&Res::pods(), pod("ns", "late", "edge-1", json!({})));
    let out = ok(join(watch.await));
    assert!(out.lines().any(|l| l == "pod/late"), "{out}");
    assert!(api
        .requests()
        .iter()
        .all(|r| r.client_cn.as_deref() == Some("kubernetes-admin")));
}

#[tokio::test]
async fn lists_page_with_limit_and_continue() {
    let (api, client) = plain().await;
    for i in 0..5 {
        let labels = json!({"app": if i % 2 == 0 { "web" } else { "db" }});
        api.upsert(&Res::pods(), pod("ns", &format!("p{i}"), "edge-1", labels));
    }
    let list_rv = api.current_rv().to_string();
    let mut seen = Vec::new();
    let mut path = "/api/v1/namespaces/ns/pods?limit=2".to_owned();
    let mut tokens = Vec::new();
    for _ in 0..10 {
        let (status, page) = get_json(&client, &path).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["metadata"]["resourceVersion"], list_rv.as_str());
        assert!(names(&page).len() <= 2);
        seen.extend(names(&page));
        match page["metadata"]["continue"].as_str() {
            Some(token) => {
                let remaining = page["metadata"]["remainingItemCount"].as_u64();
                assert_eq!(remaining, Some(5 - seen.len() as u64));
                tokens.push(token.to_owned());
                path = format!("/api/v1/namespaces/ns/pods?limit=2&continue={token}");
            }
            None => break,
        }
    }
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(tokens.len(), 2);

    let (_, web) = get_json(&client, "/api/v1/pods?limit=2&labelSelector=app%3Dweb").await;
    assert_eq!(
        names(&web),
        ["p0", "p2"],
        "pages are filled with selected items"
    );
    let (_, whole) = get_json(&client, "/api/v1/pods?limit=2&resourceVersion=0").await;
    assert_eq!(
        names(&whole).len(),
        5,
        "rv=0 is served whole, like the watch cache"
    );
    assert!(whole["metadata"].get("continue").is_none());

    let (status, bad) = get_json(&client, "/api/v1/pods?limit=2&continue=nonsense").await;
    assert_eq!((status, bad["reason"].as_str()), (400, Some("BadRequest")));
    api.upsert(&Res::pods(), pod("ns", "later", "edge-1", json!({})));
    api.compact(api.current_rv());
    let old = format!("/api/v1/namespaces/ns/pods?limit=2&continue={}", tokens[0]);
    let (status, expired) = get_json(&client, &old).await;
    assert_eq!((status, expired["reason"].as_str()), (410, Some("Expired")));
}
