//! `--apiserver tunnel`: the node proxy reaches the apiserver through the
//! agent's own tunnel connection and the server's `--apiserver` (no direct
//! route from the edge to the apiserver), and falls back to its cache when
//! that path breaks: the link behind the server, or the server itself.

use std::time::Duration;

use integration::hub::{pod, HubEnv, HubOptions};
use integration::k8s::Res;
use integration::process::metric_value;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_reaches_the_apiserver_through_the_tunnel_and_survives_its_loss() {
    let mut env = HubEnv::start(HubOptions {
        via_tunnel: true,
        ..Default::default()
    })
    .await
    .unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    let pods = Res::pods();
    for i in 0..5 {
        env.api.upsert(
            &pods,
            pod(
                "default",
                &format!("pod-{i}"),
                &[("app", "web")],
                "edge-1",
                "Running",
            ),
        );
    }
    let statuses = env
        .assert_gets_match_upstream(&[
            "/api/v1/namespaces/default/pods",
            "/api/v1/namespaces/default/pods/pod-2",
        ])
        .await;
    assert_eq!(statuses, [200, 200]);
    let hub = env.kubelet();
    // The requests really rode the agent's service streams, with the node's
    // certificate end to end (the server only pipes bytes).
    let m = env.cluster.server.metrics().unwrap();
    let ok = metric_value(
        &m,
        r#"tunnel_server_service_streams_total{result="ok",service="apiserver"}"#,
    )
    .unwrap_or(0.0);
    assert!(ok >= 1.0, "{m}");
    let seen = env.api.requests();
    assert!(seen
        .iter()
        .any(|r| r.client_cn.as_deref() == Some("system:node:edge-1")));

    // Online and quiet over the tunnel, the hub rides the tunnel's liveness
    // and sends no probes (it used to send one every --hub-probe-interval).
    env.api.clear_requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let probes = env.probes_seen();
    assert_eq!(
        probes, 0,
        "an online, quiet hub probed {probes} times in 3 s"
    );

    // The link behind the server goes silent. The next request that waits
    // --hub-probe-interval (500 ms) for its answer starts a probe; the
    // probe's timeout (1.5 s) takes the hub offline and the waiting request
    // is answered from the cache, without waiting for a client timeout.
    env.relay.cut();
    let (status, took) = timed_get(&hub, "/api/v1/namespaces/default/pods/pod-2").await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(env.reachable(), Some(false));
    env.relay.restore();
    env.wait_reachable(true, LIMIT).await.unwrap();

    // The server goes away. Until the agent's QUIC idle timeout the tunnel
    // still looks up, so the same waiting-request probe answers from the
    // cache; back online when the server returns.
    env.cluster.server.proc.kill();
    let (status, took) = timed_get(&hub, "/api/v1/namespaces/default/pods").await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    assert_eq!(env.reachable(), Some(false));
    let r = hub.get("/api/v1/namespaces/default/pods").await.unwrap();
    assert_eq!(r.status, 200);
    let list: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(list["items"].as_array().map(Vec::len), Some(5));
    tokio::task::block_in_place(|| env.cluster.server.restart()).unwrap();
    env.wait_reachable(true, LIMIT).await.unwrap();
    let r = hub
        .get("/api/v1/namespaces/default/pods/pod-4")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

/// A GET through the hub: its status and how long it took.
async fn timed_get(hub: &integration::k8s::ApiClient, path: &str) -> (u16, Duration) {
    let started = std::time::Instant::now();
    let r = hub.get(path).await.unwrap();
    (r.status, started.elapsed())
}
