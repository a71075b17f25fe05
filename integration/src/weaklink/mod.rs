//! The weak-link bench (`link-bench`): the tunnel on an emulated edge link
//! (rate cap, delay, random loss, a drop-tail bottleneck queue), beside plain
//! TCP on the same link.
//!
//! - [`link`] builds the link from namespaces, `tbf`, iptables and an NFQUEUE;
//! - [`delay_line`] is the user-space delay (pure FIFO + its I/O loop);
//! - [`tunnel`] starts tunnel-server (cloud) and tunnel-agent (edge) across it;
//! - [`measure`] holds the measurements an operator feels, [`fairness`] how a
//!   path shares the link with plain TCP;
//! - [`run`] measures every path and [`markdown`] prints them side by side.

pub mod delay_line;
pub mod fairness;
pub mod link;
pub mod measure;
pub mod tunnel;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::bench::dial::Dialer;
use crate::bench::measure::throughput;
use link::{EmulatedLink, EDGE_IP};
use measure::Millis;
use tunnel::{Transport, TunnelOverLink};

/// One path across the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkPath {
    /// The bench's client straight to the edge services: the link itself.
    PlainTcp,
    Tunnel(Transport),
}

impl LinkPath {
    pub fn label(&self, tcp_cc: &str) -> String {
        match self {
            LinkPath::PlainTcp => format!("plain TCP ({tcp_cc}), one connection per stream"),
            LinkPath::Tunnel(Transport::Quic { congestion }) => {
                format!("tunnel, QUIC ({congestion})")
            }
            LinkPath::Tunnel(Transport::WebSocket) => {
                format!("tunnel, WebSocket (TCP {tcp_cc}, yamux)")
            }
        }
    }
}

/// What to measure.
pub struct Config {
    pub paths: Vec<LinkPath>,
    /// Bytes per throughput run (shared by the streams of the 4-stream run).
    pub bytes: u64,
    /// Keystrokes per echo measurement.
    pub keystrokes: usize,
    /// New connections per request-latency measurement.
    pub requests: usize,
    pub limit: Duration,
    pub bin_dir: PathBuf,
    pub rust_log: String,
    pub keep: bool,
}

/// The edge's services (listening on every edge address).
#[derive(Clone)]
pub struct EdgeServices {
    pub sink: SocketAddr,
    pub echo: SocketAddr,
    pub meter: fairness::Meter,
    /// [`crate::http::web_server_on`], for the HTTP proxy.
    pub http: SocketAddr,
}

/// One path's results; each cell is its own `Result` so one failure does not
/// hide the rest.
pub struct LinkRow {
    pub label: String,
    pub one_stream_mbit: anyhow::Result<f64>,
    pub four_streams_mbit: anyhow::Result<f64>,
    pub echo_idle: anyhow::Result<Millis>,
    pub echo_under_bulk: anyhow::Result<Millis>,
    pub new_connection: anyhow::Result<Millis>,
    pub via_connect: Option<anyhow::Result<Millis>>,
    pub via_http_proxy: Option<anyhow::Result<Millis>>,
    pub beside_tcp: anyhow::Result<fairness::Shares>,
    /// Bytes the edge-bound bottleneck sent and dropped, over the whole row.
    pub bottleneck: String,
}

fn mbit(r: anyhow::Result<crate::bench::measure::Throughput>) -> anyhow::Result<f64> {
    r.map(|t| t.mb_per_s * 8.0)
}

/// Measures one path. The calling task must run in the cloud namespace.
pub async fn run_path(
    cfg: &Config,
    link: &EmulatedLink,
    path: &LinkPath,
    edge: &EdgeServices,
    tcp_cc: &str,
) -> anyhow::Result<LinkRow> {
    let dir = tempfile::Builder::new().prefix("link-bench-").tempdir()?;
    let on_edge = |a: SocketAddr| SocketAddr::new(EDGE_IP.into(), a.port());
    let (dialer, tunnel, request_addr) = match path {
        LinkPath::PlainTcp => (
            Dialer::Tcp {
                sink: on_edge(edge.sink),
                echo: on_edge(edge.echo),
            },
            None,
            on_edge(edge.echo),
        ),
        LinkPath::Tunnel(t) => {
            let tun = TunnelOverLink::start(
                link,
                &cfg.bin_dir,
                dir.path(),
                &[
                    on_edge(edge.sink),
                    on_edge(edge.echo),
                    on_edge(edge.meter.addr),
                    on_edge(edge.http),
                ],
                on_edge(edge.echo),
                t,
                &cfg.rust_log,
            )?;
            // CONNECT to the node's IP, as kube-apiserver does for a kubelet.
            let d = Dialer::Uds {
                path: tun.uds.clone(),
                sink: on_edge(edge.sink),
                echo: on_edge(edge.echo),
            };
            let fwd = tun.forward_echo;
            (d, Some(tun), fwd)
        }
    };
    let to_meter = |d: &Dialer| match d {
        Dialer::Uds { path, .. } => Dialer::Uds {
            path: path.clone(),
            sink: on_edge(edge.meter.addr),
            echo: on_edge(edge.echo),
        },
        _ => Dialer::Tcp {
            sink: on_edge(edge.meter.addr),
            echo: on_edge(edge.echo),
        },
    };
    let plain_tcp = Dialer::Tcp {
        sink: on_edge(edge.meter.addr),
        echo: on_edge(edge.echo),
    };
    let pids = tunnel
        .as_ref()
        .map(TunnelOverLink::pids)
        .unwrap_or_default();
    let before = link.qdisc_stats("we").unwrap_or_default();
    // Each phase starts on an idle link (see EmulatedLink::wait_idle).
    let idle = || link.wait_idle(Duration::from_millis(500), Duration::from_secs(30));
    let one_stream_mbit = mbit(throughput(&dialer, 1, cfg.bytes, &pids, cfg.limit).await);
    idle().await;
    let four_streams_mbit = mbit(throughput(&dialer, 4, cfg.bytes, &pids, cfg.limit).await);
    idle().await;
    let echo_idle = measure::echo_idle(&dialer, cfg.keystrokes / 4, KEY_INTERVAL).await;
    let echo_under_bulk = measure::echo_under_bulk(
        &dialer,
        cfg.keystrokes,
        KEY_INTERVAL,
        Duration::from_secs(3),
    )
    .await;
    idle().await;
    let new_connection = measure::request_on_new_connection(request_addr, cfg.requests).await;
    let via_connect = match tunnel {
        Some(_) => Some(measure::request_via_connect(&dialer, cfg.requests).await),
        None => None,
    };
    let via_http_proxy = match &tunnel {
        Some(t) => Some(
            measure::requests_via_http_proxy(t.http_proxy, on_edge(edge.http), cfg.requests).await,
        ),
        None => None,
    };
    let beside_tcp = fairness::beside_tcp(
        &edge.meter,
        &plain_tcp,
        &to_meter(&dialer),
        Duration::from_secs(4),
        Duration::from_secs(10),
    )
    .await;
    idle().await;
    let row = LinkRow {
        label: path.label(tcp_cc),
        one_stream_mbit,
        four_streams_mbit,
        echo_idle,
        echo_under_bulk,
        new_connection,
        via_connect,
        via_http_proxy,
        beside_tcp,
        bottleneck: format!(
            "before: {before}; after: {}",
            link.qdisc_stats("we").unwrap_or_default()
        ),
    };
    if cfg.keep {
        eprintln!("kept {}", dir.keep().display());
    }
    Ok(row)
}

/// Time between keystrokes: a fast typist.
const KEY_INTERVAL: Duration = Duration::from_millis(100);

/// The results as a Markdown table.
pub fn markdown(rows: &[LinkRow]) -> String {
    let mut out = String::from(
        "| path | 1 stream Mbit/s | 4 streams Mbit/s | echo idle p50 / p99 ms | echo under bulk p50 / p99 / max ms | request on a new connection p50 / p99 ms | via CONNECT p50 / p99 ms | HTTP proxy GET, new connection p50 / p99 ms | beside plain TCP: path / TCP Mbit/s (TCP alone) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let f = |r: &anyhow::Result<f64>| match r {
        Ok(v) => format!("{v:.1}"),
        Err(e) => format!("failed: {e:#}"),
    };
    let m2 = |r: &anyhow::Result<Millis>| match r {
        Ok(m) => format!("{:.1} / {:.1}", m.p50, m.p99),
        Err(e) => format!("failed: {e:#}"),
    };
    let m3 = |r: &anyhow::Result<Millis>| match r {
        Ok(m) => format!("{:.1} / {:.1} / {:.1}", m.p50, m.p99, m.max),
        Err(e) => format!("failed: {e:#}"),
    };
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.label,
            f(&r.one_stream_mbit),
            f(&r.four_streams_mbit),
            m2(&r.echo_idle),
            m3(&r.echo_under_bulk),
            m2(&r.new_connection),
            r.via_connect.as_ref().map_or("n/a".into(), m2),
            r.via_http_proxy.as_ref().map_or("n/a".into(), m2),
            match &r.beside_tcp {
                Ok(s) => format!(
                    "{:.1} / {:.1} ({:.1})",
                    s.path_beside, s.tcp_beside, s.tcp_alone
                ),
                Err(e) => format!("failed: {e:#}"),
            },
        ));
    }
    out
}
