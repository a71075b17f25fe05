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

    // The link behind the server goes silent: offline within 3 s, cache answers.
    env.relay.cut();
    let took = env.wait_reachable(false, LIMIT).await.unwrap();
    assert!(took < Duration::from_secs(3), "offline after {took:?}");
    let r = hub
        .get("/api/v1/namespaces/default/pods/pod-2")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    env.relay.restore();
    env.wait_reachable(true, LIMIT).await.unwrap();

    // The server goes away: the agent has no connection, the hub notices at
    // its next probe and answers from the cache; back online when the
    // server returns.
    env.cluster.server.proc.kill();
    let took = env.wait_reachable(false, LIMIT).await.unwrap();
    assert!(took < Duration::from_secs(3), "offline after {took:?}");
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
