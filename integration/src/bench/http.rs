//! HTTP through `--http-proxy-addr` versus direct: what Prometheus pays to
//! scrape an edge target, and how many small requests a keep-alive
//! connection carries per second.
//!
//! The origin is an in-process hyper server with a 1 MB Prometheus text page
//! (`/metrics`) and a 64-byte page (`/small`). Clients use hyper's HTTP/1.1
//! connection API on one kept-alive TCP connection each, sending origin-form
//! requests directly or absolute-URI requests to the proxy, as Prometheus
//! with `proxy_url` does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// Size of the scraped page.
pub const METRICS_PAGE_BYTES: usize = 1_000_000;
/// Size of the small page.
pub const SMALL_PAGE_BYTES: usize = 64;

/// A Prometheus exposition page of about `bytes` bytes (node-exporter-like lines).
pub fn metrics_page(bytes: usize) -> Bytes {
    let mut page = String::with_capacity(bytes + 128);
    page.push_str("# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.\n");
    page.push_str("# TYPE node_cpu_seconds_total counter\n");
    let modes = [
        "idle", "iowait", "irq", "nice", "softirq", "steal", "system", "user",
    ];
    let mut i = 0u64;
    while page.len() < bytes {
        let mode = modes[(i % 8) as usize];
        let line = format!(
            "node_cpu_seconds_total{{cpu=\"{}\",mode=\"{mode}\"}} {}.{:02}\n",
            i / 8,
            i * 7919 % 1_000_000,
            i % 100
        );
        page.push_str(&line);
        i += 1;
    }
    page.truncate(bytes);
    Bytes::from(page)
}

/// The origin server: `/metrics` (1 MB) and `/small` (64 B), HTTP/1.1 keep-alive.
pub async fn origin_server() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let metrics = metrics_page(METRICS_PAGE_BYTES);
    let small = Bytes::from(vec![b'x'; SMALL_PAGE_BYTES]);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            let (metrics, small) = (metrics.clone(), small.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let body = if req.uri().path() == "/metrics" {
                        metrics.clone()
                    } else {
                        small.clone()
                    };
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "text/plain; version=0.0.4")
                                .body(Full::new(body))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// How a client reaches the origin.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// Straight to the origin (origin-form requests).
    Direct,
    /// Through a plain-HTTP proxy at this address (absolute-URI requests).
    Proxy(SocketAddr),
}

/// One kept-alive HTTP/1.1 connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    origin: SocketAddr,
    route: Route,
    _conn: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connects to the origin or the proxy.
    pub async fn connect(origin: SocketAddr, route: Route) -> anyhow::Result<Self> {
        let addr = match route {
            Route::Direct => origin,
            Route::Proxy(p) => p,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            origin,
            route,
            _conn: conn,
        })
    }

    /// GETs `path` and reads the whole body; returns its length.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<usize> {
        let uri = match self.route {
            Route::Direct => path.to_string(),
            Route::Proxy(_) => format!("http://{}{path}", self.origin),
        };
        let req = Request::get(uri)
            .header("host", self.origin.to_string())
            .body(Empty::new())?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body.len())
    }
}

/// Latency percentiles of a series of requests.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    pub requests: usize,
    pub secs: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Series {
    fn from_samples(mut samples: Vec<Duration>, secs: f64) -> anyhow::Result<Self> {
        if samples.is_empty() {
            bail!("no samples");
        }
        samples.sort();
        let pick = |p: f64| {
            let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1e6
        };
        Ok(Self {
            requests: samples.len(),
            secs,
            p50_us: pick(50.0),
            p99_us: pick(99.0),
            max_us: samples[samples.len() - 1].as_secs_f64() * 1e6,
        })
    }

    /// Requests per second over the whole series.
    pub fn per_sec(&self) -> f64 {
        self.requests as f64 / self.secs
    }
}

/// `n` sequential GETs of `path` on one kept-alive connection (after a few
/// unrecorded warm-up requests), each timed until its last body byte.
pub async fn sequential(
    origin: SocketAddr,
    route: Route,
    path: &str,
    expect_len: usize,
    n: usize,
) -> anyhow::Result<Series> {
    let mut c = Client::connect(origin, route).await?;
    for _ in 0..5 {
        c.get(path).await?;
    }
    let mut samples = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let len = c.get(path).await?;
        samples.push(t.elapsed());
        if len != expect_len {
            bail!("GET {path}: {len} bytes, expected {expect_len}");
        }
    }
    Series::from_samples(samples, t0.elapsed().as_secs_f64())
}

/// `conns` kept-alive connections each sending `per_conn` sequential GETs
/// of `path` at the same time; the series covers all requests.
pub async fn concurrent(
    origin: SocketAddr,
    route: Route,
    path: &'static str,
    conns: usize,
    per_conn: usize,
) -> anyhow::Result<Series> {
    let mut clients = Vec::with_capacity(conns);
    for _ in 0..conns {
        let mut c = Client::connect(origin, route).await?;
        c.get(path).await?;
        clients.push(c);
    }
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for mut c in clients {
        set.spawn(async move {
            let mut samples = Vec::with_capacity(per_conn);
            for _ in 0..per_conn {
                let t = Instant::now();
                c.get(path).await?;
                samples.push(t.elapsed());
            }
            anyhow::Ok(samples)
        });
    }
    let mut all = Vec::with_capacity(conns * per_conn);
    while let Some(r) = set.join_next().await {
        all.extend(r.context("client task")??);
    }
    Series::from_samples(all, t0.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_page_is_exactly_the_asked_size_and_parses_as_lines() {
        let p = metrics_page(10_000);
        assert_eq!(p.len(), 10_000);
        assert!(p.starts_with(b"# HELP"));
        assert!(std::str::from_utf8(&p).unwrap().lines().count() > 100);
    }

    #[tokio::test]
    async fn direct_requests_return_whole_pages() {
        let origin = origin_server().await.unwrap();
        let s = sequential(origin, Route::Direct, "/metrics", METRICS_PAGE_BYTES, 3)
            .await
            .unwrap();
        assert_eq!(s.requests, 3);
        let s = concurrent(origin, Route::Direct, "/small", 2, 10)
            .await
            .unwrap();
        assert_eq!(s.requests, 20);
    }
}
