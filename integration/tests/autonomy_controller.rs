//! The autonomy controller (`--autonomy-controller`) of the real tunnel-server against the
//! fake apiserver (TLS, client certificate, kubeconfig): pods bound to a node annotated
//! `edgetunnel.io/autonomy-duration` get their unreachable/not-ready tolerations within 5 s
//! of binding, follow annotation changes (24h -> 1h -> 0 -> removed), converge after a
//! kill -9 and restart, and ordinary nodes' pods are never touched. The fake validates pod
//! updates as kube-apiserver does, and the controller never gets a 422 from it.

use std::time::{Duration, Instant};

use http::Method;
use integration::controllers::ControllerEnv;
use integration::k8s::{ApiClient, FakeApiserver, FakeApiserverOptions, Res};
use integration::process::metric_value;
use serde_json::{json, Value};

const ANNOTATION: &str = "edgetunnel.io/autonomy-duration";
const MARKER: &str = "edgetunnel.io/autonomy-tolerations";
const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
const NOT_READY: &str = "node.kubernetes.io/not-ready";
/// The acceptance limit from binding to patched tolerations.
const BIND_LIMIT: Duration = Duration::from_secs(5);
/// Limit for the other convergences (annotation changes, restart).
const CONVERGE_LIMIT: Duration = Duration::from_secs(15);

fn node(name: &str, autonomy: Option<&str>) -> Value {
    let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
    if let Some(a) = autonomy {
        n["metadata"]["annotations"] = json!({ ANNOTATION: a });
        // The link is down: the node lifecycle controller has tainted it.
        n["spec"] = json!({"taints": [{"key": UNREACHABLE, "effect": "NoExecute"}]});
        n["status"] = json!({"conditions": [{"type": "Ready", "status": "Unknown"}]});
    }
    n
}

/// A pod as admission leaves it: DefaultTolerationSeconds' two tolerations and one of its own.
fn pod(name: &str, node: Option<&str>) -> Value {
    let mut spec = json!({
        "containers": [{"name": "app", "image": "nginx:1.27"}],
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"},
            {"key": NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        ],
    });
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    json!({"metadata": {"name": name, "namespace": "apps"}, "spec": spec})
}

/// What a pod says now: the tolerationSeconds of both taints' NoExecute tolerations
/// (`Some(None)`: present, forever) and the marker.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    not_ready: Option<Option<i64>>,
    unreachable: Option<Option<i64>>,
    marker: Option<String>,
    tolerations: usize,
}

fn seen(api: &FakeApiserver, name: &str) -> Seen {
    let p = api
        .get(&Res::pods(), Some("apps"), name)
        .unwrap_or_else(|| panic!("pod {name} is gone"));
    let tolerations = p["spec"]["tolerations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let secs = |key: &str| {
        tolerations
            .iter()
            .find(|t| t["key"] == key && t["effect"] == "NoExecute")
            .map(|t| t["tolerationSeconds"].as_i64())
    };
    Seen {
        not_ready: secs(NOT_READY),
        unreachable: secs(UNREACHABLE),
        marker: p["metadata"]["annotations"][MARKER]
            .as_str()
            .map(str::to_owned),
        tolerations: tolerations.len(),
    }
}

fn want(seconds: Option<i64>, marker: Option<&str>) -> Seen {
    Seen {
        not_ready: Some(seconds),
        unreachable: Some(seconds),
        marker: marker.map(str::to_owned),
        tolerations: 3,
    }
}

/// Polls until every pod in `names` is `wanted`; returns the time it took.
async fn converge(api: &FakeApiserver, names: &[&str], wanted: &Seen, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if names.iter().all(|n| seen(api, n) == *wanted) {
            return started.elapsed();
        }
        if started.elapsed() > limit {
            let now: Vec<_> = names.iter().map(|n| (n, seen(api, n))).collect();
            panic!("not converged to {wanted:?} within {limit:?}: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_autonomous_nodes_tolerate_the_outage() {
    let env = ControllerEnv::start().await.unwrap();
    let api = &env.api;

    api.upsert(&Res::nodes(), node("edge-1", Some("24h")));
    api.upsert(&Res::nodes(), node("cloud-1", None));
    api.upsert(&Res::pods(), pod("web-cloud", Some("cloud-1")));
    api.upsert(&Res::pods(), pod("early", Some("edge-1")));
    api.upsert(&Res::pods(), pod("late", None));
    let cloud_before = api.get(&Res::pods(), Some("apps"), "web-cloud");

    let mut server = env.server(&["--autonomy-controller"]).await.unwrap();
    // The initial lists: a pod bound before the controller started is patched too.
    let t = converge(
        api,
        &["early"],
        &want(Some(86_400), Some("24h")),
        CONVERGE_LIMIT,
    )
    .await;
    println!("pod bound before start patched {t:?} after the server was ready");
    assert_eq!(
        seen(api, "late"),
        want(Some(300), None),
        "unbound pods are left alone"
    );

    // Binding during the node's outage.
    api.upsert(&Res::pods(), pod("late", Some("edge-1")));
    let t = converge(api, &["late"], &want(Some(86_400), Some("24h")), BIND_LIMIT).await;
    println!("newly bound pod patched {t:?} after binding (limit {BIND_LIMIT:?})");

    api.upsert(&Res::nodes(), node("edge-1", Some("1h")));
    let t = converge(
        api,
        &["early", "late"],
        &want(Some(3600), Some("1h")),
        CONVERGE_LIMIT,
    )
    .await;
    println!("24h -> 1h applied in {t:?}");

    // Crash; while the controller is away the annotation changes and a pod is bound.
    server.proc.kill();
    api.upsert(&Res::nodes(), node("edge-1", Some("0")));
    api.upsert(&Res::pods(), pod("while-down", Some("edge-1")));
    let restarted = Instant::now();
    server.restart().unwrap();
    let t = converge(
        api,
        &["early", "late", "while-down"],
        &want(None, Some("0")),
        CONVERGE_LIMIT,
    )
    .await;
    println!(
        "after kill -9: converged to forever {t:?} after ready ({:?} after the restart began)",
        restarted.elapsed()
    );

    api.upsert(&Res::nodes(), node("edge-1", None));
    let t = converge(
        api,
        &["early", "late", "while-down"],
        &want(Some(300), None),
        CONVERGE_LIMIT,
    )
    .await;
    println!("annotation removed: back to 300 s in {t:?}");

    // Ordinary node: byte-identical, never patched.
    assert_eq!(
        api.get(&Res::pods(), Some("apps"), "web-cloud"),
        cloud_before
    );
    let answered = api.answered();
    assert!(
        !answered
            .iter()
            .any(|a| a.method == "PATCH" && a.path_and_query.contains("web-cloud")),
        "the ordinary node's pod was patched"
    );
    let patches: Vec<_> = answered.iter().filter(|a| a.method == "PATCH").collect();
    let refused: Vec<_> = patches.iter().filter(|a| a.status == 422).collect();
    assert!(refused.is_empty(), "the fake refused patches: {refused:?}");
    println!("{} pod patches, none refused", patches.len());
    // 2 (24h) + 2 (1h) + 3 (0) + 3 (removed), and no more: nothing is patched twice.
    assert_eq!(patches.iter().filter(|a| a.status == 200).count(), 10);

    let metrics = server.metrics().unwrap();
    let patched = metric_value(
        &metrics,
        "tunnel_server_autonomy_pod_patches_total{result=\"patched\"}",
    );
    // The restarted server saw the last two rounds: 3 + 3.
    assert_eq!(patched, Some(6.0), "{metrics}");
    assert_eq!(
        metric_value(&metrics, "tunnel_server_autonomy_nodes"),
        Some(0.0)
    );
    server.proc.stop(Duration::from_secs(5));
}

/// The fake refuses, as kube-apiserver does, a patch changing more than added tolerations
/// or tolerationSeconds (the full table is in the fake's own unit tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_refuses_pod_patches_the_apiserver_refuses() {
    let api = FakeApiserver::start(FakeApiserverOptions::default())
        .await
        .unwrap();
    api.upsert(&Res::pods(), pod("p", Some("edge-1")));
    let client = ApiClient::plain(api.addr());
    let path = "/api/v1/namespaces/apps/pods/p";
    let patch = |body: Value| {
        let client = client.clone();
        async move {
            client
                .request(
                    Method::PATCH,
                    path,
                    Some("application/strategic-merge-patch+json"),
                    Some(&body),
                )
                .await
                .unwrap()
        }
    };
    let ok = patch(json!({"spec": {"tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"},
        {"key": NOT_READY, "operator": "Exists", "effect": "NoExecute"},
        {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
    ]}}))
    .await;
    assert_eq!(ok.status, 200);
    let removed = patch(json!({"spec": {"tolerations": [
        {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60},
    ]}}))
    .await;
    assert_eq!(removed.status, 422);
    let status = removed.json().unwrap();
    assert_eq!(status["reason"], "Invalid");
    assert_eq!(
        status["message"],
        "Pod \"p\" is invalid: spec.tolerations: Forbidden: existing toleration can not be modified except its tolerationSeconds"
    );
    let moved = patch(json!({"spec": {"nodeName": "edge-2"}})).await;
    assert_eq!(moved.status, 422);
    assert!(moved.json().unwrap()["message"].as_str().is_some_and(
        |m| m.contains("spec: Forbidden: pod updates may not change fields other than")
    ));
    assert_eq!(
        api.get(&Res::pods(), Some("apps"), "p").unwrap()["spec"]["nodeName"],
        "edge-1"
    );
}
