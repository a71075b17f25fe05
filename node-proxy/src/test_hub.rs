//! In-process test fixtures: a TLS "apiserver" on loopback answering with a
//! given hyper service, and a hub in front of it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use autonomy_cache::{AutonomyCache, CacheConfig};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::filters::Filters;
use crate::health::HealthPolicy;
use crate::metrics::HubMetrics;
use crate::prober::HubHealth;
use crate::record::CacheFailures;
use crate::server::{serve, Hub};
use crate::settings::FilterSettings;
use crate::upstream::{DirectDialer, UpstreamClient};
use crate::upstream_tls::UpstreamTls;

/// Response body of a fake apiserver.
pub type FakeBody = BoxBody<Bytes, Infallible>;

/// Writes a cluster PKI into `dir` (CA, server and proxy-client certificates).
pub fn pki(dir: &Path) {
    certs::init_cluster(dir, "localhost", &["127.0.0.1".parse().unwrap()], false).unwrap();
}

/// Serves `answer` over TLS with the PKI in `dir`; upgrades allowed.
pub async fn fake_apiserver<F, Fut>(dir: &Path, answer: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<FakeBody>> + Send + 'static,
{
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
            let answer = answer.clone();
            let svc = hyper::service::service_fn(move |req| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer(req).await) }
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

/// A hub for `components` in front of `upstream`, its cache in `dir/cache`.
pub async fn hub(
    dir: &Path,
    upstream: SocketAddr,
    components: &str,
    filters: FilterSettings,
) -> (SocketAddr, Arc<Hub>) {
    let tls = UpstreamTls::load(
        Some(&dir.join("ca.crt")),
        &dir.join("proxy-client.crt"),
        &dir.join("proxy-client.key"),
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
        dir: dir.join("cache"),
        max_bytes: 16 << 20,
        gc_after: Duration::from_secs(3600),
        commit_interval: Duration::from_millis(2),
    })
    .unwrap();
    let hub = Arc::new(Hub {
        client,
        health,
        filters: Filters::new(filters, cache.clone()),
        cache,
        components: components.parse().unwrap(),
        failures: CacheFailures::new(metrics.clone()),
        metrics,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, hub.clone()));
    (addr, hub)
}
