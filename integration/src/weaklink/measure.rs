//! What an operator feels on a weak link, each measurement bounded in count
//! and time: interactive echo while a bulk transfer fills the link, and the
//! cost of a request on a new connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::bench::dial::{Dialer, Service};
pub use crate::bench::measure::Millis;
use crate::bench::measure::{payload, send_counted};

/// p50/p99/max of what was measured; an empty sample is an error.
fn millis(samples: Vec<Duration>) -> anyhow::Result<Millis> {
    Millis::of(samples).context("no samples")
}

/// Limit for one echo, so a wedged path fails instead of hanging.
const ECHO_LIMIT: Duration = Duration::from_secs(10);

/// One byte out, the same byte back: a keystroke and its echo.
async fn keystroke<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    s.write_all(b"k").await?;
    let mut b = [0u8; 1];
    tokio::time::timeout(ECHO_LIMIT, s.read_exact(&mut b))
        .await
        .context("no echo within 10 s")??;
    if b != *b"k" {
        bail!("echo returned {b:?}");
    }
    Ok(t0.elapsed())
}

/// Keystroke echo on one connection while another connection of the same
/// path pushes bulk data cloud→edge (a `kubectl cp` beside an `exec`).
///
/// The bulk runs alone for `warmup` first, so the link is saturated (and
/// its queue full, for a loss-based controller) before the first sample;
/// then `samples` keystrokes, `interval` apart, as a typist would.
pub async fn echo_under_bulk(
    d: &Dialer,
    samples: usize,
    interval: Duration,
    warmup: Duration,
) -> anyhow::Result<Millis> {
    let bulk = d.dial(Service::Sink).await?;
    let mut echo = d.dial(Service::Echo).await?;
    // More than the link can carry in the measurement's time: it never ends
    // on its own and is aborted after the last sample.
    let sender = tokio::spawn(send_counted(bulk, u64::MAX / 2, payload()));
    tokio::time::sleep(warmup).await;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        if sender.is_finished() {
            bail!("the bulk transfer ended early: {:?}", sender.await);
        }
        out.push(keystroke(&mut echo).await?);
        tokio::time::sleep(interval).await;
    }
    sender.abort();
    millis(out)
}

/// Keystroke echo with nothing else on the link: the path's floor.
pub async fn echo_idle(d: &Dialer, samples: usize, interval: Duration) -> anyhow::Result<Millis> {
    let mut echo = d.dial(Service::Echo).await?;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        out.push(keystroke(&mut echo).await?);
        tokio::time::sleep(interval).await;
    }
    millis(out)
}

/// A request on a new TCP connection to `addr` (the `--forward` listener,
/// or the edge service itself for plain TCP): connect, one byte, its echo.
/// For a client that speaks first this is what one request costs.
pub async fn request_on_new_connection(addr: SocketAddr, n: usize) -> anyhow::Result<Millis> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let mut s = tokio::time::timeout(ECHO_LIMIT, TcpStream::connect(addr))
            .await
            .context("connect timed out")??;
        s.set_nodelay(true)?;
        keystroke(&mut s).await?;
        out.push(t0.elapsed());
    }
    millis(out)
}

/// The same through the CONNECT front end: dial (CONNECT answered after the
/// agent's dial succeeded), one byte, its echo.
pub async fn request_via_connect(d: &Dialer, n: usize) -> anyhow::Result<Millis> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let mut c = d.dial(Service::Echo).await?;
        keystroke(&mut c).await?;
        out.push(t0.elapsed());
    }
    millis(out)
}

/// A GET through the plain-HTTP proxy at `proxy` to the web server at
/// `origin` ([`crate::http::web_server_on`]) on a new connection, answered
/// 200: what a new Prometheus scrape connection costs.
pub async fn request_via_http_proxy(
    proxy: SocketAddr,
    origin: SocketAddr,
) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let resp = tokio::time::timeout(
        ECHO_LIMIT,
        crate::http::get_via_proxy(proxy, &origin.to_string()),
    )
    .await
    .context("no answer within 10 s")??;
    if resp.status != 200 {
        bail!("proxy answered {}: {}", resp.status, resp.text());
    }
    Ok(t0.elapsed())
}

/// [`request_via_http_proxy`] `n` times.
pub async fn requests_via_http_proxy(
    proxy: SocketAddr,
    origin: SocketAddr,
    n: usize,
) -> anyhow::Result<Millis> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(request_via_http_proxy(proxy, origin).await?);
    }
    millis(out)
}
