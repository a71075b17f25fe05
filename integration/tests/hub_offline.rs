//! Node proxy offline: a client that listed and watched keeps getting answers
//! (selectors honoured) when the link is cut, its watch is held and closed when
//! the link returns, the next list shows what changed upstream meanwhile; the
//! switch happens within 3 s with requests in flight; a restart while offline
//! serves the cache and goes online when the link returns; kubelet's strategic
//! merge pod status patch is applied offline and read back, across a restart too.

use std::time::{Duration, Instant};

use hyper::Method;
use integration::hub::{enc, item_names, pod, HubEnv, KUBELET};
use integration::k8s::{Fault, Res};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(30);

/// Eight pods in two namespaces, on two nodes, in several phases.
fn seed(env: &HubEnv) {
    let pods = Res::pods();
    let d = "default";
    let k = "kube-system";
    for p in [
        pod(
            d,
            "p-web-1",
            &[("app", "web"), ("tier", "front")],
            "edge-1",
            "Running",
        ),
        pod(
            d,
            "p-web-2",
            &[("app", "web"), ("tier", "front"), ("canary", "true")],
            "edge-1",
            "Pending",
        ),
        pod(
            d,
            "p-db-1",
            &[("app", "db"), ("tier", "back")],
            "edge-1",
            "Running",
        ),
        pod(
            d,
            "p-db-2",
            &[("app", "db"), ("tier", "back")],
            "edge-2",
            "Running",
        ),
        pod(d, "p-cache-1", &[("app", "cache")], "edge-2", "Failed"),
        pod(d, "p-nolabel", &[], "edge-1", "Succeeded"),
        pod(
            k,
            "p-dns",
            &[("app", "dns"), ("tier", "infra")],
            "edge-1",
            "Running",
        ),
        pod(k, "p-proxy", &[("app", "proxy")], "edge-2", "Pending"),
    ] {
        env.api.upsert(&pods, p);
    }
}

/// The 20 selector cases: (scope path, labelSelector, fieldSelector).
const SELECTOR_CASES: [(&str, &str, &str); 20] = [
    ("/api/v1/pods", "app=web", ""),
    ("/api/v1/pods", "app==db", ""),
    ("/api/v1/pods", "app!=web", ""),
    ("/api/v1/pods", "app in (web,db)", ""),
    ("/api/v1/pods", "app notin (web,db)", ""),
    ("/api/v1/pods", "canary", ""),
    ("/api/v1/pods", "!canary", ""),
    ("/api/v1/pods", "app=web,tier=front", ""),
    ("/api/v1/pods", "tier in (front,back),app!=db", ""),
    ("/api/v1/pods", "!tier", ""),
    ("/api/v1/pods", "", "spec.nodeName=edge-1"),
    ("/api/v1/pods", "", "spec.nodeName!=edge-1"),
    ("/api/v1/pods", "", "status.phase=Running"),
    ("/api/v1/pods", "", "metadata.name=p-db-1"),
    ("/api/v1/pods", "", "metadata.namespace=kube-system"),
    (
        "/api/v1/pods",
        "",
        "spec.nodeName=edge-1,status.phase==Running",
    ),
    ("/api/v1/pods", "app=db", "spec.nodeName=edge-2"),
    ("/api/v1/namespaces/default/pods", "tier notin (front)", ""),
    (
        "/api/v1/namespaces/default/pods",
        "",
        "status.phase!=Running",
    ),
    (
        "/api/v1/namespaces/kube-system/pods",
        "app",
        "spec.nodeName=edge-1",
    ),
];

fn selector_path(scope: &str, label: &str, field: &str) -> String {
    let mut q = Vec::new();
    if !label.is_empty() {
        q.push(format!("labelSelector={}", enc(label)));
    }
    if !field.is_empty() {
        q.push(format!("fieldSelector={}", enc(field)));
    }
    if q.is_empty() {
        scope.to_string()
    } else {
        format!("{scope}?{}", q.join("&"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_then_watch_survives_a_cut_and_catches_up_after() {
    let env = HubEnv::start(Default::default()).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    seed(&env);
    let pods = Res::pods();
    let kubelet = env.kubelet();

    // Online: list, then watch from the list's version, like client-go.
    let list = kubelet.get("/api/v1/pods").await.unwrap().json().unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut watch = kubelet
        .watch(&format!("/api/v1/pods?watch=1&resourceVersion={rv}"))
        .await
        .unwrap();
    env.api.upsert(
        &pods,
        pod("default", "p-late", &[("app", "web")], "edge-1", "Running"),
    );
    let ev = watch.next(LIMIT).await.unwrap().expect("watch event");
    assert_eq!(ev["object"]["metadata"]["name"], "p-late");
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Expected answers come from the apiserver itself, bypassing the link.
    let direct = env.direct(KUBELET);
    let mut expected = Vec::new();
    for (scope, label, field) in SELECTOR_CASES {
        let path = selector_path(scope, label, field);
        let r = direct.get(&path).await.unwrap();
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        expected.push((path, item_names(&r.json().unwrap())));
    }

    env.relay.cut();
    let took = env.wait_reachable(false, LIMIT).await.unwrap();
    eprintln!("offline after {took:?}");
    // The watch opened online ends when the hub goes offline.
    let end = watch.next(LIMIT).await.unwrap();
    assert!(
        end.is_none(),
        "online watch should end at the switch, got {end:?}"
    );

    for (path, names) in &expected {
        let r = kubelet.get(path).await.unwrap();
        assert_eq!(
            r.status,
            200,
            "offline {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(&item_names(&r.json().unwrap()), names, "offline {path}");
    }
    let one = kubelet
        .get("/api/v1/namespaces/default/pods/p-late")
        .await
        .unwrap();
    assert_eq!(one.status, 200);
    assert_eq!(one.json().unwrap()["metadata"]["name"], "p-late");
    let gone = kubelet
        .get("/api/v1/namespaces/default/pods/nope")
        .await
        .unwrap();
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json().unwrap()["reason"], "NotFound");

    // Changes upstream while offline.
    env.api.delete(&pods, Some("default"), "p-db-1");
    env.api.upsert(
        &pods,
        pod("default", "p-new", &[("app", "web")], "edge-1", "Running"),
    );

    // A watch while offline is held: 200, no events, closed when the link returns.
    let mut held = kubelet
        .watch(&format!(
            "/api/v1/pods?watch=1&resourceVersion={rv}&timeoutSeconds=300"
        ))
        .await
        .unwrap();
    assert_eq!(held.status, 200);
    let early = tokio::time::timeout(Duration::from_secs(1), held.next(LIMIT)).await;
    assert!(early.is_err(), "held watch sent something: {early:?}");
    let restored = Instant::now();
    env.relay.restore();
    let closed = held.next(LIMIT).await.unwrap();
    assert!(
        closed.is_none(),
        "held watch must close without events, got {closed:?}"
    );
    eprintln!(
        "held watch closed {:?} after the link returned",
        restored.elapsed()
    );
    env.wait_reachable(true, LIMIT).await.unwrap();

    // Re-list: reflects the offline changes, deletions included.
    let names = item_names(&kubelet.get("/api/v1/pods").await.unwrap().json().unwrap());
    assert!(!names.contains(&"p-db-1".to_string()), "{names:?}");
    assert!(names.contains(&"p-new".to_string()), "{names:?}");
    // ...and the cache learned it too: cut again, the deletion stays visible.
    env.relay.cut();
    env.wait_reachable(false, LIMIT).await.unwrap();
    let offline = item_names(&kubelet.get("/api/v1/pods").await.unwrap().json().unwrap());
    assert_eq!(offline, names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_within_3_s_of_the_cut_with_requests_in_flight() {
    let env = HubEnv::start(Default::default()).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    seed(&env);
    let kubelet = env.kubelet();
    let path = "/api/v1/namespaces/default/pods/p-web-1";
    let cached = kubelet.get(path).await.unwrap();
    assert_eq!(cached.status, 200);
    let _watch = kubelet.watch("/api/v1/pods?watch=1").await.unwrap();

    // A get stuck upstream when the link goes silent.
    env.api.set_fault(Fault::Delay {
        path_prefix: path.to_string(),
        dur: Duration::from_secs(60),
    });
    let in_flight = {
        let kubelet = kubelet.clone().with_timeout(LIMIT);
        tokio::spawn(async move {
            let r = kubelet.get(path).await;
            (r, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cut = Instant::now();
    env.relay.cut();
    let (r, answered) = in_flight.await.unwrap();
    let r = r.unwrap();
    let took = answered.duration_since(cut);
    eprintln!("in-flight get answered from the cache {took:?} after the cut");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, cached.body, "the cache answers what upstream sent");
    assert!(took < Duration::from_secs(3), "offline after {took:?}");
    assert_eq!(env.reachable(), Some(false));
    assert!(env.agent_logs().contains("cloud unreachable"));
    let metrics = env.agent().metrics().unwrap();
    let answered_from_cache = metrics.lines().any(|l| {
        l.starts_with("tunnel_agent_cache_requests_total")
            && l.contains(r#"component="kubelet""#)
            && l.contains(r#"verb="get""#)
            && l.contains(r#"result="cache""#)
    });
    assert!(answered_from_cache, "no cache answer counted:\n{metrics}");
    assert!(
        metrics.contains(r#"tunnel_agent_hub_switches_total{to="offline"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_while_offline_serves_the_cache_then_goes_online() {
    let mut env = HubEnv::start(Default::default()).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    seed(&env);
    let kubelet = env.kubelet();
    let online = kubelet
        .get("/api/v1/pods?labelSelector=app%3Dweb")
        .await
        .unwrap();
    assert_eq!(online.status, 200);

    env.relay.cut();
    env.kill_agent();
    env.start_agent().await.unwrap();
    let r = kubelet
        .clone()
        .with_timeout(LIMIT)
        .get("/api/v1/pods?labelSelector=app%3Dweb")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        item_names(&r.json().unwrap()),
        item_names(&online.json().unwrap())
    );
    assert_eq!(env.reachable(), Some(false));

    env.relay.restore();
    let took = env.wait_reachable(true, LIMIT).await.unwrap();
    eprintln!("online {took:?} after the link returned");
    env.api.upsert(
        &Res::pods(),
        pod("default", "p-after", &[("app", "web")], "edge-1", "Running"),
    );
    let names = item_names(
        &kubelet
            .get("/api/v1/pods?labelSelector=app%3Dweb")
            .await
            .unwrap()
            .json()
            .unwrap(),
    );
    assert!(names.contains(&"p-after".to_string()), "{names:?}");
}

/// A real pod as kube-apiserver returned it (see autonomy-cache/testdata/recorded/).
const RECORDED_POD: &str = include_str!("../../autonomy-cache/testdata/recorded/pod-minikube.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_status_patch_offline_is_read_back_across_a_restart() {
    let mut env = HubEnv::start(Default::default()).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    let recorded: Value = serde_json::from_str(RECORDED_POD).unwrap();
    env.api.upsert(&Res::pods(), recorded);
    let kubelet = env.kubelet();
    let list = format!(
        "/api/v1/pods?fieldSelector={}",
        enc("spec.nodeName=minikube")
    );
    let online = kubelet.get(&list).await.unwrap().json().unwrap();
    let before = online["items"][0].clone();
    assert_eq!(before["metadata"]["name"], "queue-l4dv8", "{online}");

    env.relay.cut();
    env.wait_reachable(false, LIMIT).await.unwrap();
    // kubelet's status manager after the container crashed (CreateTwoWayMergePatch).
    let patch = json!({
        "metadata": {"uid": before["metadata"]["uid"]},
        "status": {
            "$setElementOrder/conditions": [{"type": "Initialized"}, {"type": "Ready"},
                                            {"type": "ContainersReady"}, {"type": "PodScheduled"}],
            "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                            "lastTransitionTime": "2022-12-23T10:01:02Z"}],
            "containerStatuses": [{"name": "queue", "ready": false, "restartCount": 1,
                                   "image": "gcr.io/kuar-demo/kuard-amd64:1", "imageID": "",
                                   "lastState": {}, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]
        }
    });
    let path = "/api/v1/namespaces/default/pods/queue-l4dv8/status";
    let smp = Some("application/strategic-merge-patch+json");
    let r = kubelet
        .request(Method::PATCH, path, smp, Some(&patch))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let patched = r.json().unwrap();
    let mut expected = before.clone();
    let ready = &mut expected["status"]["conditions"][1];
    ready["status"] = json!("False");
    ready["reason"] = json!("ContainersNotReady");
    ready["lastTransitionTime"] = json!("2022-12-23T10:01:02Z");
    expected["status"]["containerStatuses"] = patch["status"]["containerStatuses"].clone();
    if expected.get("kind").is_none() {
        // The list item came without kind/apiVersion; the cache stores them.
        expected["kind"] = json!("Pod");
        expected["apiVersion"] = json!("v1");
    }
    assert_eq!(patched, expected);

    let one = "/api/v1/namespaces/default/pods/queue-l4dv8";
    let got = kubelet.get(one).await.unwrap();
    assert_eq!((got.status, got.json().unwrap()), (200, expected.clone()));
    let listed = kubelet.get(&list).await.unwrap().json().unwrap();
    assert_eq!(listed["items"][0], expected, "kubelet's list");

    env.kill_agent();
    env.start_agent().await.unwrap();
    let restarted = kubelet.clone().with_timeout(LIMIT);
    let got = restarted.get(one).await.unwrap();
    assert_eq!(
        (got.status, got.json().unwrap()),
        (200, expected.clone()),
        "after a restart"
    );
    let listed = restarted.get(&list).await.unwrap().json().unwrap();
    assert_eq!(
        listed["items"][0], expected,
        "kubelet's list after a restart"
    );
    assert_eq!(env.reachable(), Some(false));
}
