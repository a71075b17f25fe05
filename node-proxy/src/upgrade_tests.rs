//! In-process check that the hub splices upgraded connections (exec, attach,
//! port-forward): 101 passes through and bytes flow both ways.

use std::sync::Arc;
use std::time::Duration;

use autonomy_cache::{AutonomyCache, CacheConfig};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::health::HealthPolicy;
use crate::metrics::HubMetrics;
use crate::prober::HubHealth;
use crate::record::CacheFailures;
use crate::server::{serve, Hub};
use crate::upstream::{DirectDialer, UpstreamClient};
use crate::upstream_tls::UpstreamTls;

/// A TLS "apiserver" that answers every request with 101 and echoes the upgraded bytes.
async fn echo_upgrade_server(dir: &std::path::Path) -> std::net::SocketAddr {
    let chain = certs::load_cert_chain(&dir.join("server.crt")).unwrap();
    let key = certs::load_private_key(&dir.join("server.key")).unwrap();
    let roots = certs::load_root_store(&dir.join("proxy-client-ca.crt")).unwrap();
    let mut tls = certs::proxy_server_config(chain, key, roots).unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let svc =
                hyper::service::service_fn(|mut req: Request<hyper::body::Incoming>| async move {
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                        }
                    });
                    Response::builder()
                        .status(101)
                        .header("connection", "Upgrade")
                        .header("upgrade", "SPDY/3.1")
                        .body(Empty::<Bytes>::new())
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades(),
            );
        }
    });
    addr
}

#[tokio::test]
async fn upgraded_connections_are_spliced_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    certs::init_cluster(
        dir.path(),
        "localhost",
        &["127.0.0.1".parse().unwrap()],
        false,
    )
    .unwrap();
    let upstream = echo_upgrade_server(dir.path()).await;
    let tls = UpstreamTls::load(
        Some(&dir.path().join("ca.crt")),
        &dir.path().join("proxy-client.crt"),
        &dir.path().join("proxy-client.key"),
    )
    .unwrap();
    let dialer = Arc::new(DirectDialer {
        host: "127.0.0.1".into(),
        port: upstream.port(),
    });
    let client = UpstreamClient::new(
        dialer,
        tls,
        "localhost".try_into().unwrap(),
        hyper::header::HeaderValue::from_static("localhost"),
        Duration::from_secs(5),
    );
    let metrics = HubMetrics::register(&prometheus::Registry::new()).unwrap();
    let health = HubHealth::new(HealthPolicy::default(), metrics.clone(), client.clone());
    let cache = AutonomyCache::open(CacheConfig {
        dir: dir.path().join("cache"),
        max_bytes: 1 << 20,
        gc_after: Duration::from_secs(3600),
        commit_interval: Duration::from_millis(2),
    })
    .unwrap();
    let hub = Arc::new(Hub {
        client,
        health,
        cache,
        components: "kubelet".parse().unwrap(),
        failures: CacheFailures::new(metrics.clone()),
        metrics,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hub_addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, hub));

    let mut conn = tokio::net::TcpStream::connect(hub_addr).await.unwrap();
    conn.write_all(
        b"POST /api/v1/namespaces/default/pods/p/exec?command=sh HTTP/1.1\r\nHost: hub\r\n\
          Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nUser-Agent: kubectl/v1.30.0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "connection closed before the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: spdy/3.1"), "{head}");
    for msg in [&b"hello through the hub"[..], b"and back again"] {
        conn.write_all(msg).await.unwrap();
        let mut echoed = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, msg);
    }
}
