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

over_each_transport!(logs_bulk, logs_follow, exec, port_forward, isolation, reset);

/// TCP resets cross the tunnel in both directions: an edge service that
/// resets its connection makes the client's read fail with a reset (not a
/// clean end), and a client that resets makes the edge service see one.
async fn reset(transport: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, rx) = tokio::sync::oneshot::channel::<std::io::ErrorKind>();
    let tx = std::sync::Mutex::new(Some(tx));
    let svc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let svc_addr = svc.local_addr().unwrap();
    tokio::spawn(async move {
        // First connection: write, then reset (SO_LINGER 0 and close).
        let (mut s, _) = svc.accept().await.unwrap();
        s.write_all(b"partial").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.set_zero_linger().unwrap();
        drop(s);
        // Second connection: report what a read sees after the client's reset.
        let (mut s, _) = svc.accept().await.unwrap();
        let mut buf = [0u8; 16];
        let kind = loop {
            match s.read(&mut buf).await {
                Ok(0) => break std::io::ErrorKind::UnexpectedEof,
                Ok(_) => continue,
                Err(e) => break e.kind(),
            }
        };
        if let Some(tx) = tx.lock().unwrap().take() {
            let _ = tx.send(kind);
        }
    });
    let mut opts = ClusterOptions::allowing(
        &[svc_addr.to_string()],
        &[&format!("--transport={transport}")],
    );
    opts.server.proxy = true;
    let c = Cluster::start(opts);
    let tls = integration::client::proxy_tls(
        &c.pki.path("ca.crt"),
        Some((
            &c.pki.path("proxy-client.crt"),
            &c.pki.path("proxy-client.key"),
        )),
    )
    .unwrap();
    let proxy = c.server.proxy_addr.unwrap();

    // Edge resets: the client reads the data, then a reset.
    let mut r = integration::client::connect_tls(&tls, proxy, &svc_addr.to_string())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let mut got = [0u8; 7];
    r.stream.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"partial");
    let end = tokio::time::timeout(Duration::from_secs(10), r.stream.read(&mut [0u8; 16]))
        .await
        .expect("reset reaches the client");
    let kind = end.map_err(|e| e.kind());
    assert_eq!(
        kind,
        Err(std::io::ErrorKind::ConnectionReset),
        "{transport}: edge reset arrived as {kind:?}"
    );

    // Client resets: the edge service sees a reset.
    let r = integration::client::connect_tls(&tls, proxy, &svc_addr.to_string())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let (tcp, _) = r.stream.into_inner();
    tcp.set_zero_linger().unwrap();
    drop(tcp);
    let seen = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("edge service saw the end")
        .unwrap();
    assert_eq!(
        seen,
        std::io::ErrorKind::ConnectionReset,
        "{transport}: client reset arrived at the edge as {seen:?}"
    );
}

/// Every `--congestion-control` on both ends carries bulk edge→cloud bytes
/// and concurrent echoes intact over QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_congestion_controller_carries_the_streams() {
    for cc in ["newreno", "bbr"] {
        let data = pattern(10 * 1024 * 1024, 3);
        let source = source_server(data.clone()).await.unwrap();
        let echo = echo_server().await.unwrap();
        let flag = format!("--congestion-control={cc}");
        let allow = [source.to_string(), echo.to_string()];
        let c = Cluster::start(
            ClusterOptions::allowing(&allow, &["--transport=quic", &flag]).server_args(&[&flag]),
        );
        scenarios::logs_bulk(&c.uds(), source, &data).await;
        let took = scenarios::port_forward(&c.uds(), echo, 50, 1024 * 1024).await;
        eprintln!("{cc}: 50 x 1 MB echoed in {took:?}");
    }
}
