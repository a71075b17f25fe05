//! Tunnel-core stream behaviour through the real binaries on loopback, over
//! each transport: `kubectl logs` (bulk and follow), `exec` (interactive,
//! half-close), `port-forward` (200 concurrent connections) and isolation of
//! a stalled reader from the other streams.

use std::time::Duration;

use integration::scenarios;
use integration::services::{echo_server, line_server, pattern, source_server};
use integration::{Cluster, ClusterOptions};

/// A cluster whose agent (`edge-1`, 127.0.0.1) uses `transport` and may
/// reach the given loopback ports.
fn cluster(transport: &str, ports: &[u16]) -> Cluster {
    let allow: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let c = Cluster::start(ClusterOptions::allowing(
        &allow,
        &[&format!("--transport={transport}")],
    ));
    let agents = c.server.agents().unwrap();
    assert_eq!(agents[0]["transport"], transport, "{agents}");
    c
}

async fn logs_bulk(transport: &str) {
    let data = pattern(10 * 1024 * 1024, 1);
    let svc = source_server(data.clone()).await.unwrap();
    let c = cluster(transport, &[svc.port()]);
    scenarios::logs_bulk(&c.uds(), svc, &data).await;
}

async fn logs_follow(transport: &str) {
    let svc = line_server(30, Duration::from_millis(50)).await.unwrap();
    let c = cluster(transport, &[svc.port()]);
    let worst = scenarios::logs_follow(&c.uds(), svc, 30, Duration::from_millis(50)).await;
    eprintln!("{transport}: follow worst per-line delay {worst:?}");
}

async fn exec(transport: &str) {
    let svc = echo_server().await.unwrap();
    let c = cluster(transport, &[svc.port()]);
    scenarios::exec_half_close(&c.uds(), svc).await;
}

async fn port_forward(transport: &str) {
    let svc = echo_server().await.unwrap();
    let c = cluster(transport, &[svc.port()]);
    let took = scenarios::port_forward(&c.uds(), svc, 200, 1024 * 1024).await;
    eprintln!("{transport}: 200 x 1 MB echoed in {took:?}");
    let m = c.server.metrics().unwrap();
    assert_eq!(
        integration::process::metric_value(
            &m,
            "tunnel_server_streams_total{frontend=\"connect\",result=\"ok\"}"
        ),
        Some(200.0),
        "{m}"
    );
}

async fn isolation(transport: &str) {
    let data = pattern(20 * 1024 * 1024, 3);
    let source = source_server(data.clone()).await.unwrap();
    let echo = echo_server().await.unwrap();
    let c = cluster(transport, &[source.port(), echo.port()]);
    let worst = scenarios::isolation(&c.uds(), source, &data, echo, Duration::from_secs(5)).await;
    eprintln!("{transport}: worst round trip beside a stalled 20 MB stream: {worst:?}");
    assert!(
        worst <= Duration::from_millis(100),
        "{transport}: round trip took {worst:?}"
    );
}

macro_rules! over_each_transport {
    ($($name:ident),*) => {
        mod quic {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("quic").await
                }
            )*
        }
        mod websocket {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name("websocket").await
                }
            )*
        }
    };
}

over_each_transport!(logs_bulk, logs_follow, exec, port_forward, isolation);
