//! The four measurements, each bounded in count and time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::dial::{Conn, Dialer, Service};
use super::services::Echo;
use super::sys;

/// Size of each `write` by a throughput sender: large enough that the
/// sender's syscalls are not what is measured.
const WRITE_CHUNK: usize = 1024 * 1024;

/// A sender's payload: pseudo-random, so no layer can compress it.
pub fn payload() -> Arc<Vec<u8>> {
    Arc::new(crate::services::pattern(WRITE_CHUNK, 7))
}

/// Throughput of one run.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Decimal megabytes (1e6 bytes) per second of delivered payload.
    pub mb_per_s: f64,
    pub secs: f64,
    /// CPU seconds the path's processes used per GB (1e9 bytes) delivered.
    pub path_cpu_per_gb: f64,
    /// CPU seconds the bench process itself (senders + sink) used per GB.
    pub bench_cpu_per_gb: f64,
    /// CPU seconds per wall second used by anything else on the machine
    /// during the run (0 on a quiet machine; up to the core count).
    pub other_cores: f64,
}

/// Sends `bytes` over an already open connection to the sink and waits for
/// the sink to confirm it counted them all.
pub(crate) async fn send_counted(
    mut c: Conn,
    bytes: u64,
    data: Arc<Vec<u8>>,
) -> anyhow::Result<()> {
    c.write_all(&bytes.to_be_bytes()).await?;
    let mut left = bytes;
    while left > 0 {
        let n = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        c.write_all(&data[..n]).await?;
        left -= n as u64;
    }
    c.flush().await?;
    let mut ack = [0u8; 8];
    c.read_exact(&mut ack)
        .await
        .context("waiting for the sink's byte count")?;
    if u64::from_be_bytes(ack) != bytes {
        bail!(
            "sink confirmed {} bytes, sent {bytes}",
            u64::from_be_bytes(ack)
        );
    }
    Ok(())
}

impl Throughput {
    /// `total` bytes moved since `t0`, with the CPU used since `cpu0`.
    fn since(total: u64, t0: Instant, cpu0: &sys::CpuSnapshot, pids: &[u32]) -> Self {
        let secs = t0.elapsed().as_secs_f64();
        let cpu = cpu0.since(pids);
        let gb = total as f64 / 1e9;
        Throughput {
            mb_per_s: total as f64 / 1e6 / secs,
            secs,
            path_cpu_per_gb: cpu.path / gb,
            bench_cpu_per_gb: cpu.bench / gb,
            other_cores: cpu.other_cores,
        }
    }
}

/// `streams` connections to the sink, opened first, then all sending
/// `total / streams` bytes at once; the clock runs from the first payload
/// byte until the last sink confirmation. Connection setup is excluded: it
/// is measured separately as latency.
pub async fn throughput(
    d: &Dialer,
    streams: usize,
    total: u64,
    pids: &[u32],
    limit: Duration,
) -> anyhow::Result<Throughput> {
    let data = payload();
    let mut conns = Vec::with_capacity(streams);
    for _ in 0..streams {
        conns.push(d.dial(Service::Sink).await?);
    }
    let per = total / streams as u64;
    let cpu0 = sys::CpuSnapshot::take(pids);
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in conns.into_iter().enumerate() {
        // The first stream carries the remainder so exactly `total` moves.
        let n = if i == 0 {
            total - per * (streams as u64 - 1)
        } else {
            per
        };
        set.spawn(send_counted(c, n, data.clone()));
    }
    let all = async {
        while let Some(r) = set.join_next().await {
            r.context("sender task")??;
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(limit, all)
        .await
        .with_context(|| format!("transfer not done within {limit:?}"))??;
    Ok(Throughput::since(total, t0, &cpu0, pids))
}

/// One connection to the sink, which then sends `total` bytes back
/// ([`services::DOWNLOAD`](super::services::DOWNLOAD)): edge → cloud, the
/// way `kubectl logs` and `exec` output travel. The clock runs from the
/// request until the last byte is read. Connection setup is excluded.
pub async fn download(
    d: &Dialer,
    total: u64,
    pids: &[u32],
    limit: Duration,
) -> anyhow::Result<Throughput> {
    let mut c = d.dial(Service::Sink).await?;
    let cpu0 = sys::CpuSnapshot::take(pids);
    let t0 = Instant::now();
    let receive = async {
        c.write_all(&(total | super::services::DOWNLOAD).to_be_bytes())
            .await?;
        c.flush().await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < total {
            match c.read(&mut buf).await? {
                0 => bail!("the source closed after {got} of {total} bytes"),
                n => got += n as u64,
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(limit, receive)
        .await
        .with_context(|| format!("download not done within {limit:?}"))??;
    Ok(Throughput::since(total, t0, &cpu0, pids))
}

/// One new connection: start → connected (CONNECT answered for the tunnel)
/// → 1 byte written → the echoed byte read. This is what a `kubectl exec`
/// or `logs` request pays before its first byte, on top of the apiserver.
pub(crate) async fn one_echo(d: &Dialer) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut c = d.dial(Service::Echo).await?;
    c.write_all(b"x").await?;
    let mut b = [0u8; 1];
    tokio::time::timeout(ECHO_LIMIT, c.read_exact(&mut b))
        .await
        .context("no echo within 10 s")??;
    let dt = t0.elapsed();
    if b != *b"x" {
        bail!("echo returned {b:?}");
    }
    Ok(dt)
}

/// Limit for one echo round trip, so a wedged path fails instead of hanging.
const ECHO_LIMIT: Duration = Duration::from_secs(10);

/// Connection-latency percentiles in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Cores busy with other work on the machine while sampling.
    pub other_cores: f64,
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted, non-empty samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// p50, p99 and max of a sample, in milliseconds: what every latency table
/// in docs/benchmarks.md reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Millis {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Millis {
    /// `None` for an empty sample.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let max = *samples.last()?;
        Some(Self {
            p50: ms(percentile(&samples, 50.0)),
            p99: ms(percentile(&samples, 99.0)),
            max: ms(max),
        })
    }
}

/// `n` sequential new connections, each timed by [`one_echo`].
///
/// Sequential on purpose: this is the latency of an unloaded path, not of a
/// queue. A few unrecorded warm-up connections go first so one-time costs
/// (lazy allocations, first QUIC stream credit) do not land in the sample.
pub async fn latency(
    d: &Dialer,
    n: usize,
    pids: &[u32],
    limit: Duration,
) -> anyhow::Result<Latency> {
    let deadline = Instant::now() + limit;
    for _ in 0..20 {
        one_echo(d).await?;
    }
    let cpu0 = sys::CpuSnapshot::take(pids);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        if Instant::now() > deadline {
            bail!("only {} of {n} connections within {limit:?}", samples.len());
        }
        samples.push(one_echo(d).await?);
    }
    if samples.is_empty() {
        bail!("no latency samples (--connections 0)");
    }
    samples.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(Latency {
        p50_us: us(percentile(&samples, 50.0)),
        p99_us: us(percentile(&samples, 99.0)),
        max_us: us(samples[samples.len() - 1]),
        other_cores: cpu0.since(pids).other_cores,
    })
}

/// Most connections of the idle phase in setup at once (see [`idle_memory`]).
pub const IDLE_WINDOW: usize = 16;

/// Memory held by the path's processes for idle connections.
#[derive(Debug, Clone, Copy)]
pub struct IdleMemory {
    pub kib_per_conn: f64,
    pub before_kib: u64,
    pub after_kib: u64,
}

/// Opens `n` connections to the echo service and leaves them idle (no
/// payload), then compares the summed `VmRSS` of the path's processes.
///
/// Completion is judged at the far end: the echo service must have accepted
/// all `n`, so ssh and rathole are counted with their whole chain set up,
/// like the tunnel after its `200`. Opening is paced the same way: at most
/// [`IDLE_WINDOW`] connections may be accepted locally but not yet at the
/// far end. For the tunnel that changes nothing (its `200` already means the
/// far end accepted); ssh and rathole accept locally at once, and an unpaced
/// burst of thousands of simultaneous setups would measure their behaviour
/// under a connection storm rather than the cost of an idle connection
/// (rathole 0.5 answers such a burst with Noise handshake timeouts and
/// leaves connections unserved). A short pause before reading RSS lets
/// lazily touched buffers settle. Run on freshly started processes, before
/// any bulk transfer, so freed throughput buffers in the allocator cannot
/// hide the growth.
pub async fn idle_memory(
    d: &Dialer,
    echo: &Echo,
    n: usize,
    pids: &[u32],
    limit: Duration,
) -> anyhow::Result<IdleMemory> {
    if n == 0 {
        bail!("--idle 0");
    }
    // Warm-up: the first connections allocate per-process state once.
    for _ in 0..5 {
        one_echo(d).await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let accepted0 = echo.accepted();
    let before = sys::tree_rss_kib(pids)?;
    let deadline = Instant::now() + limit;
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        while (echo.accepted() - accepted0) + (IDLE_WINDOW as u64) < i as u64 {
            if Instant::now() > deadline {
                bail!(
                    "echo service saw {} of {i} opened connections within {limit:?}",
                    echo.accepted() - accepted0
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {n} idle connections within {limit:?}",
                conns.len()
            );
        }
        conns.push(d.dial(Service::Echo).await?);
    }
    while echo.accepted() - accepted0 < n as u64 {
        if Instant::now() > deadline {
            bail!(
                "echo service saw {} of {n} connections within {limit:?}",
                echo.accepted() - accepted0
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sys::tree_rss_kib(pids)?;
    drop(conns);
    // Let the closes propagate before the next phase measures anything.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(IdleMemory {
        kib_per_conn: (after as f64 - before as f64) / n as f64,
        before_kib: before,
        after_kib: after,
    })
}
