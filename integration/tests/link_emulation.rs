//! The weak-link bench's emulated link does what it claims: the delay line
//! adds the round-trip time and the bottleneck caps the rate. Only lower
//! bounds are checked (the emulation guarantees them on any machine); the
//! upper bounds are generous sanity limits, not speed targets.
//!
//! On the same link, the tunnel's `--forward` and its HTTP proxy carry a
//! client's first bytes with the stream's open: a request on a new
//! connection costs one round trip over the link, not two. With a 400 ms RTT the two cases are
//! 200 ms apart, far more than any scheduling noise.
//!
//! Needs root, `ip netns`, iptables (statistic, NFQUEUE) and tc with tbf;
//! elsewhere it prints a loud `SKIPPED` line and passes (CI runs as root).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use integration::netns::{self, NsRuntime};
use integration::process::bin;
use integration::weaklink::delay_line::DelayLineProcess;
use integration::weaklink::link::{EmulatedLink, LinkShape, EDGE_IP};
use integration::weaklink::measure;
use integration::weaklink::tunnel::{Transport, TunnelOverLink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ONE_WAY: Duration = Duration::from_millis(30);
const RATE_BIT: u64 = 4_000_000;
const BYTES: usize = 1_000_000;

/// A lossless emulated link with its delay line and a runtime in each end.
/// Fields drop in order: the runtimes leave the namespaces before the link
/// deletes them.
struct Ends {
    cloud: NsRuntime,
    edge: NsRuntime,
    _delay: DelayLineProcess,
    link: EmulatedLink,
}

impl Ends {
    fn on(rate_bit: u64, one_way: Duration, queue_bytes: u64) -> Self {
        let link = EmulatedLink::create(LinkShape {
            rate_bit,
            one_way_ms: one_way.as_millis() as u64,
            loss: 0.0,
            queue_bytes,
            tcp_congestion: "reno",
        })
        .expect("emulated link");
        let delay = DelayLineProcess::start(&link, &bin("link-bench"), Duration::from_secs(120))
            .expect("delay line");
        Self {
            edge: NsRuntime::enter(&link.edge_ns).expect("edge runtime"),
            cloud: NsRuntime::enter(&link.cloud_ns).expect("cloud runtime"),
            _delay: delay,
            link,
        }
    }
}

#[test]
fn the_link_adds_its_delay_and_caps_its_rate() {
    if netns::skip_unless_available("the_link_adds_its_delay_and_caps_its_rate") {
        return;
    }
    let ends = Ends::on(RATE_BIT, ONE_WAY, 64_000);
    let (cloud, edge, link) = (&ends.cloud, &ends.edge, &ends.link);
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let echo = edge
            .spawn(async move { integration::bench::services::echo_server_on(any).await })
            .await
            .unwrap()
            .expect("echo server");
        let target = SocketAddr::new(EDGE_IP.into(), echo.addr.port());
        let measured = cloud
            .spawn(async move {
                // Connect (one RTT), one byte there and back (one more).
                let t0 = Instant::now();
                let mut s = TcpStream::connect(target).await?;
                s.set_nodelay(true)?;
                s.write_all(b"x").await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                let two_rtts = t0.elapsed();
                // Then 1 MB through the echo: the edge-bound direction is
                // capped at RATE_BIT, and so is the way back.
                let data = vec![7u8; BYTES];
                let t1 = Instant::now();
                let (mut r, mut w) = s.into_split();
                let writer = tokio::spawn(async move { w.write_all(&data).await });
                let mut back = vec![0u8; BYTES];
                r.read_exact(&mut back).await?;
                writer.await??;
                std::io::Result::Ok((two_rtts, t1.elapsed()))
            })
            .await
            .unwrap()
            .expect("traffic across the link");
        let (two_rtts, transfer) = measured;
        let rtt = 2 * ONE_WAY;
        assert!(
            two_rtts >= 2 * rtt && two_rtts < 2 * rtt + Duration::from_millis(500),
            "connect + echo took {two_rtts:?}; the link's RTT is {rtt:?}"
        );
        // 8 Mbit at 4 Mbit/s: at least 2 s (less the tbf burst).
        let floor = Duration::from_secs_f64((BYTES * 8) as f64 / RATE_BIT as f64 * 0.9);
        assert!(
            transfer >= floor && transfer < Duration::from_secs(60),
            "1 MB echoed in {transfer:?}; at {RATE_BIT} bit/s it needs at least {floor:?}"
        );
        let sent = link.qdisc_stats("we").expect("tbf stats");
        assert!(sent.starts_with("Sent "), "{sent}");
    });
}

const SLOW_ONE_WAY: Duration = Duration::from_millis(200);

/// The median of five requests, each on a new connection, timed by `one`.
async fn median_of_five<F, Fut>(one: F) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut out = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), one()).await??;
        out.push(t0.elapsed());
    }
    out.sort();
    Ok((out[out.len() / 2], out))
}

#[test]
fn requests_on_new_connections_cost_one_round_trip() {
    if netns::skip_unless_available("requests_on_new_connections_cost_one_round_trip") {
        return;
    }
    let ends = Ends::on(8_000_000, SLOW_ONE_WAY, 400_000);
    let (cloud, edge, link) = (&ends.cloud, &ends.edge, &ends.link);
    let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (echo, http) = rt
        .block_on(edge.spawn(async move {
            let echo = integration::bench::services::echo_server_on(any).await?;
            let http = integration::http::web_server_on(&any.to_string()).await?;
            anyhow::Ok((echo, http))
        }))
        .unwrap()
        .expect("edge services");
    let echo_on_edge = SocketAddr::new(EDGE_IP.into(), echo.addr.port());
    let http_on_edge = SocketAddr::new(EDGE_IP.into(), http.port());
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = bin("tunnel-server").parent().unwrap().to_path_buf();
    // The readiness check talks to the server's admin port in the cloud
    // namespace, so the start runs on a thread that is there.
    let tunnel = std::thread::scope(|s| {
        s.spawn(|| {
            netns::enter_on_this_thread(&link.cloud_ns)?;
            TunnelOverLink::start(
                link,
                &bin_dir,
                dir.path(),
                &[echo_on_edge, http_on_edge],
                echo_on_edge,
                &Transport::Quic {
                    congestion: "loss-tolerant".into(),
                },
                "info",
            )
        })
        .join()
        .expect("start thread")
    })
    .expect("tunnel across the link");
    let (forward, proxy) = (tunnel.forward_echo, tunnel.http_proxy);
    let ((fwd, fwd_all), (http, http_all)) = rt
        .block_on(cloud.spawn(async move {
            let fwd = median_of_five(|| async {
                let mut s = TcpStream::connect(forward).await?;
                s.set_nodelay(true)?;
                s.write_all(b"k").await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                anyhow::ensure!(&b == b"k", "echo returned {b:?}");
                Ok(())
            })
            .await?;
            let http = median_of_five(|| async {
                measure::request_via_http_proxy(proxy, http_on_edge).await?;
                Ok(())
            })
            .await?;
            anyhow::Ok((fwd, http))
        }))
        .unwrap()
        .expect("requests through --forward and --http-proxy-addr");
    let rtt = 2 * SLOW_ONE_WAY;
    for (what, median, all) in [
        ("--forward", fwd, fwd_all),
        ("--http-proxy-addr", http, http_all),
    ] {
        assert!(
            median >= rtt && median < rtt + rtt / 2,
            "a request on a new {what} connection took {median:?} (all: {all:?}); \
             one round trip over the link is {rtt:?}, two would be {:?}",
            2 * rtt
        );
    }
    drop(tunnel);
}
