//! Node proxy online: answers byte-identical to the apiserver's, watch events
//! as sent, credentials and `Accept` as the cache needs, `..` refused; large
//! lists cross the link gzipped and are decoded for the client and the cache.

use std::time::Duration;

use integration::hub::{get_counting_with, item_names, pod, HubEnv, HubOptions, KUBELET};
use integration::k8s::{Res, DEFAULT_GZIP_THRESHOLD_BYTES};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_list_are_byte_identical_to_upstream() {
    let env = HubEnv::start(Default::default()).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    let pods = Res::pods();
    for i in 0..20 {
        let app = if i % 2 == 0 { "web" } else { "db" };
        env.api.upsert(
            &pods,
            pod(
                "default",
                &format!("pod-{i}"),
                &[("app", app)],
                "edge-1",
                "Running",
            ),
        );
    }
    env.assert_gets_match_upstream(&[
        "/api/v1/namespaces/default/pods",
        "/api/v1/namespaces/default/pods/pod-3",
        "/api/v1/pods?labelSelector=app%3Dweb",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1",
        "/api/v1/namespaces/default/pods/absent",
        "/api",
        "/apis",
        "/version",
    ])
    .await;
    // The hub presented its client certificate and asked for JSON.
    let seen = env.api.requests();
    let r = seen
        .iter()
        .find(|r| {
            r.path_and_query == "/api/v1/namespaces/default/pods/pod-3"
                && r.user_agent.as_deref() == Some(KUBELET)
        })
        .expect("the hub's request seen upstream");
    assert_eq!(
        r.client_cn.as_deref(),
        Some("system:node:edge-1"),
        "node certificate"
    );
    assert_eq!(r.accept.as_deref(), Some("application/json"));
    assert_eq!(r.user_agent.as_deref(), Some(KUBELET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_arrive_as_sent() {
    let env = HubEnv::start(Default::default()).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    let pods = Res::pods();
    let rv = env
        .api
        .upsert(&pods, pod("default", "w-0", &[], "edge-1", "Pending"));
    let path = format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={rv}");
    let mut via_hub = env.kubelet().watch(&path).await.unwrap();
    let mut upstream = env.direct(KUBELET).watch(&path).await.unwrap();
    assert_eq!(via_hub.status, 200);
    for i in 1..=30 {
        env.api.upsert(
            &pods,
            pod("default", &format!("w-{i}"), &[], "edge-1", "Pending"),
        );
    }
    env.api.upsert(
        &pods,
        pod("default", "w-1", &[("x", "y")], "edge-1", "Running"),
    );
    env.api.delete(&pods, Some("default"), "w-2");
    for n in 0..32 {
        let a = via_hub.next(LIMIT).await.unwrap().expect("hub watch event");
        let b = upstream
            .next(LIMIT)
            .await
            .unwrap()
            .expect("upstream watch event");
        assert_eq!(a, b, "event {n} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_with_dot_dot_are_refused_with_a_status() {
    let env = HubEnv::start(Default::default()).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    env.api.clear_requests();
    for path in [
        "/api/v1/namespaces/default/pods/../secrets",
        "/api/v1/namespaces/../pods",
        "/api/v1/namespaces/default/pods/%2e%2e/x",
    ] {
        let r = env.kubelet().get(path).await.unwrap();
        assert_eq!(r.status, 400, "{path}");
        let status = r.json().unwrap();
        assert_eq!(status["kind"], "Status", "{path}");
        assert_eq!(status["code"], 400);
    }
    assert!(
        env.api
            .requests()
            .iter()
            .all(|r| !r.path_and_query.contains("..")),
        "a `..` path reached upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_pass_through_without_the_node_certificate() {
    let env = HubEnv::start(HubOptions {
        optional_client_cert: true,
        ..Default::default()
    })
    .await
    .unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    env.api.clear_requests();
    let with_token = "/api/v1/namespaces/default/configmaps?token=1";
    let (status, _) = get_counting_with(
        env.hub_addr,
        with_token,
        "coredns/1.11",
        "Authorization: Bearer abc\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let without = "/api/v1/namespaces/default/configmaps?token=0";
    assert_eq!(
        env.client("coredns/1.11")
            .get(without)
            .await
            .unwrap()
            .status,
        200
    );
    let seen = env.api.requests();
    let token = seen
        .iter()
        .find(|r| r.path_and_query == with_token)
        .expect("token request upstream");
    assert_eq!(token.authorization.as_deref(), Some("Bearer abc"));
    assert_eq!(
        token.client_cn, None,
        "a request with its own token must not carry the node certificate"
    );
    let node = seen
        .iter()
        .find(|r| r.path_and_query == without)
        .expect("request upstream");
    assert_eq!(node.authorization, None);
    // (This apiserver does not ask for certificates; the node certificate is
    // checked in get_and_list_are_byte_identical_to_upstream, where it must.)
}

/// The items of a list, keyed by name, without `kind`/`apiVersion` (cached items
/// carry them, apiserver list items do not).
fn items_by_name(list: &Value) -> Vec<(String, Value)> {
    let mut items: Vec<(String, Value)> = list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if let Some(o) = i.as_object_mut() {
                        o.remove("kind");
                        o.remove("apiVersion");
                    }
                    (i["metadata"]["name"].to_string(), i)
                })
                .collect()
        })
        .unwrap_or_default();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_lists_cross_the_link_gzipped_and_are_cached_as_json() {
    let env = HubEnv::start(Default::default()).await.unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    let pods = Res::pods();
    for i in 0..500 {
        env.api.upsert(
            &pods,
            pod(
                "default",
                &format!("pod-{i:03}"),
                &[("app", "web"), ("tier", "front")],
                "edge-1",
                "Running",
            ),
        );
    }
    let path = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1";
    let oracle = env.direct("oracle/1.0");
    let plain = oracle.get(path).await.unwrap();
    assert!(
        plain.body.len() > DEFAULT_GZIP_THRESHOLD_BYTES,
        "the list must be large enough to be compressed: {} bytes",
        plain.body.len()
    );
    let zipped = oracle.with_accept_encoding("gzip").get(path).await.unwrap();
    assert_eq!(zipped.headers["content-encoding"], "gzip");
    assert!(
        zipped.body.len() * 4 < plain.body.len(),
        "gzip: {} -> {} bytes",
        plain.body.len(),
        zipped.body.len()
    );
    let gzipped_before = env.api.gzipped_responses();
    env.api.clear_requests();
    // kubelet without Accept-Encoding, and as client-go's transport sends it.
    for client in [env.kubelet(), env.kubelet().with_accept_encoding("gzip")] {
        let r = client.get(path).await.unwrap();
        assert_eq!(r.status, 200);
        assert!(
            !r.headers.contains_key("content-encoding"),
            "the hub sends decoded JSON"
        );
        assert_eq!(r.body, plain.body, "decoded body differs from upstream's");
    }
    assert_eq!(
        env.api.gzipped_responses(),
        gzipped_before + 2,
        "both upstream answers were gzipped"
    );
    let seen = env.api.requests();
    let hub_lists: Vec<_> = seen
        .iter()
        .filter(|r| r.path_and_query == path && r.user_agent.as_deref() == Some(KUBELET))
        .collect();
    assert_eq!(hub_lists.len(), 2);
    for r in hub_lists {
        assert_eq!(r.accept_encoding.as_deref(), Some("gzip"));
        assert_eq!(r.accept.as_deref(), Some("application/json"));
    }
    // The cache recorded the decoded list: offline, the same objects come back.
    env.relay.cut();
    env.wait_reachable(false, LIMIT).await.unwrap();
    let cached = env.kubelet().get(path).await.unwrap();
    assert_eq!(cached.status, 200);
    let (cached, upstream) = (cached.json().unwrap(), plain.json().unwrap());
    assert_eq!(item_names(&cached).len(), 500);
    assert!(
        items_by_name(&cached) == items_by_name(&upstream),
        "the cached objects differ from upstream's"
    );
}
