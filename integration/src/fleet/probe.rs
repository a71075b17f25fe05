//! The fleet measurements: registration waits, idle cost, dials.
//!
//! Every wait is bounded; a wait that runs out is a result (how many got
//! there in how long), not an error, so one slow phase still leaves a report.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::sim::{Fleet, Wire};
use crate::bench::measure::Millis;
use crate::bench::sys;

/// How often the server's registry is polled while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Limit for one dial (connect, CONNECT answer, echo).
const DIAL_LIMIT: Duration = Duration::from_secs(10);

/// Agents the server counts as registered, from `/readyz` ("ready; N agents
/// connected"): the registry's size, cheap to read at any fleet size
/// (unlike `/agents`, a JSON document of every agent).
pub async fn server_registered(admin: SocketAddr) -> anyhow::Result<usize> {
    let (_, body) = tokio::task::spawn_blocking(move || crate::process::http_get(admin, "/readyz"))
        .await
        .context("admin poll task")??;
    parse_registered(&body).with_context(|| format!("unexpected /readyz answer {body:?}"))
}

/// The agent count in a `/readyz` body.
fn parse_registered(body: &str) -> Option<usize> {
    let head = body.trim().strip_prefix("ready; ")?;
    head.split_whitespace().next()?.parse().ok()
}

/// How long until every agent was registered at the server.
#[derive(Debug, Clone, Copy)]
pub struct Registration {
    /// Seconds from the start of the wait's clock to the last registration
    /// (or to giving up).
    pub secs: f64,
    /// Registered at the end (all of them unless it timed out).
    pub registered: usize,
    pub of: usize,
}

impl Registration {
    pub fn complete(&self) -> bool {
        self.registered >= self.of
    }
}

/// Polls the server until `n` agents are registered, timing from `since`;
/// sets `done` when it returns.
pub async fn wait_registered(
    admin: SocketAddr,
    n: usize,
    since: Instant,
    limit: Duration,
    done: &AtomicBool,
) -> Registration {
    let mut registered = 0;
    loop {
        // The server is down or restarting between polls during a storm.
        if let Ok(k) = server_registered(admin).await {
            registered = k;
        }
        if registered >= n || since.elapsed() > limit {
            done.store(true, Ordering::Release);
            return Registration {
                secs: since.elapsed().as_secs_f64(),
                registered,
                of: n,
            };
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Dial latencies of one phase.
#[derive(Debug, Clone, Default)]
pub struct Dials {
    pub ok: usize,
    pub failed: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub first_error: Option<String>,
}

impl Dials {
    fn from_samples(samples: Vec<Duration>, failed: usize, first_error: Option<String>) -> Self {
        let ok = samples.len();
        let m = Millis::of(samples).unwrap_or(Millis {
            p50: f64::NAN,
            p99: f64::NAN,
            max: f64::NAN,
        });
        Dials {
            ok,
            failed,
            p50_ms: m.p50,
            p99_ms: m.p99,
            max_ms: m.max,
            first_error,
        }
    }
}

/// One dial through the server to `node`: connect to the Unix socket,
/// `CONNECT node:port`, send a few bytes and read them back from the
/// simulated agent's echo. Timed from the socket connect to the last byte.
pub async fn dial_once(uds: &Path, node: &str) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let work = async {
        let s = tokio::net::UnixStream::connect(uds)
            .await
            .with_context(|| format!("connecting {}", uds.display()))?;
        let mut s = crate::bench::dial::connect(s, format!("{node}:10250")).await?;
        let msg = *b"fleet-bench ping";
        s.write_all(&msg).await?;
        let mut back = [0u8; 16];
        s.read_exact(&mut back).await?;
        if back != msg {
            bail!("echo from {node} returned {back:?}");
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(DIAL_LIMIT, work)
        .await
        .with_context(|| format!("dial to {node} not echoed within {DIAL_LIMIT:?}"))??;
    Ok(t0.elapsed())
}

/// Up to `count` sequential dials, each to a random agent that registered
/// after `since` and holds that connection, until `stop` is set or `limit`
/// passes. Sequential: this is a dial's latency, not the throughput of a
/// dial queue.
pub async fn dials(
    uds: &Path,
    fleet: &Fleet,
    since: Instant,
    count: usize,
    limit: Duration,
    stop: &AtomicBool,
) -> Dials {
    let deadline = Instant::now() + limit;
    let mut samples = Vec::with_capacity(count);
    let mut failed = 0;
    let mut first_error = None;
    while samples.len() + failed < count && Instant::now() < deadline {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let Some(i) = pick_registered(fleet, since) else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        match dial_once(uds, &super::sim::node_name(i)).await {
            Ok(d) => samples.push(d),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    Dials::from_samples(samples, failed, first_error)
}

/// A random agent registered since `since` (a bounded number of tries).
fn pick_registered(fleet: &Fleet, since: Instant) -> Option<usize> {
    (0..1000)
        .map(|_| rand::random_range(0..fleet.len()))
        .find(|&i| fleet.registered_since(i, since))
}

/// The server's cost and the wire traffic with the fleet idle.
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    pub secs: f64,
    /// Server RSS at the end of the window, and before any agent came.
    pub rss_kib: u64,
    pub rss_empty_kib: u64,
    /// Server CPU seconds per wall second (1.0 = one core busy).
    pub server_cores: f64,
    /// The same for this process (all the simulated agents).
    pub bench_cores: f64,
    /// Cores busy with anything else on the machine.
    pub other_cores: f64,
    pub wire: Wire,
    /// Agents registered at the end, and registrations during the window
    /// (reconnects: should be 0).
    pub registered: usize,
    pub reconnects: u64,
}

/// Leaves the fleet idle for `window` and measures.
pub async fn idle(
    server_pid: u32,
    fleet: &Fleet,
    window: Duration,
    rss_empty_kib: u64,
) -> anyhow::Result<Idle> {
    let pids = [server_pid];
    let regs0 = fleet.counters().registrations;
    let wire0 = fleet.wire();
    let cpu0 = sys::CpuSnapshot::take(&pids);
    let server0 = sys::tree_cpu_secs(&pids);
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let secs = t0.elapsed().as_secs_f64();
    let server_secs = sys::tree_cpu_secs(&pids) - server0;
    let cpu = cpu0.since(&pids);
    let wire = fleet.wire().since(&wire0);
    let c = fleet.counters();
    Ok(Idle {
        secs,
        rss_kib: sys::rss_kib(server_pid)?,
        rss_empty_kib,
        server_cores: server_secs / secs,
        bench_cores: cpu.bench / secs,
        other_cores: cpu.other_cores,
        wire,
        registered: c.registered,
        reconnects: c.registrations - regs0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agent_count_of_readyz() {
        assert_eq!(
            parse_registered("ready; 10000 agents connected\n"),
            Some(10000)
        );
        assert_eq!(parse_registered("listeners not bound yet\n"), None);
    }

    #[test]
    fn percentiles_of_no_samples_are_not_numbers() {
        let d = Dials::from_samples(Vec::new(), 3, None);
        assert_eq!((d.ok, d.failed), (0, 3));
        assert!(d.p99_ms.is_nan());
        let d = Dials::from_samples((1..=100).map(Duration::from_millis).collect(), 0, None);
        assert_eq!((d.p50_ms, d.p99_ms, d.max_ms), (50.0, 99.0, 100.0));
    }
}
