//! `fleet-bench`: N simulated agents against one real `tunnel-server`.
//!
//! For each fleet size, in one run: a fresh server; all N agents dial at
//! once (cold start) and the time until the server has registered every
//! one; the server's memory and CPU and the bytes on the wire with the
//! fleet idle; dials through the server to random agents; then the server
//! is killed with SIGKILL and restarted on the same ports, and the time
//! until all N are back is measured together with dials during that storm.
//! See `docs/benchmarks.md` ("Fleet") for method and results.

pub mod probe;
pub mod report;
pub mod sim;

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{Pki, ServerOptions, ServerProc};
use probe::{Dials, Idle, Registration};
use sim::{AgentSettings, Counters, Fleet, Identity};

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Fleet sizes, each measured on a fresh server.
    pub sizes: Vec<usize>,
    /// Idle measurement window.
    pub idle: Duration,
    /// Pause between "all registered" and the idle window, so the
    /// handshakes' allocations and retransmissions settle first.
    pub settle: Duration,
    /// Dials while idle, and most dials during the storm.
    pub dials: usize,
    /// Limit of each registration wait (cold start, after kill -9).
    pub register_limit: Duration,
    /// Connections per quinn client endpoint (one UDP socket each).
    pub per_endpoint: usize,
    pub agent: AgentSettings,
    /// Extra tunnel-server flags.
    pub server_args: Vec<String>,
}

/// Everything measured for one fleet size.
#[derive(Debug, Clone)]
pub struct Run {
    pub agents: usize,
    pub cold: Registration,
    pub idle: Result<Idle, String>,
    pub idle_dials: Dials,
    pub restart: Registration,
    pub storm_dials: Dials,
    /// After the kill: how many agents noticed their connection was gone,
    /// and how long after the kill (median, slowest).
    pub noticed: usize,
    pub noticed_p50: Option<Duration>,
    pub noticed_max: Option<Duration>,
    /// The fleet's counters at the end (failed attempts, first error).
    pub counters: Counters,
}

/// Runs every size in `cfg.sizes` with identities from `pki` (issued up
/// front for the largest size; size N uses the first N). Blocking: it
/// drives `rt` itself, and the server's start and restart block in between.
pub fn run_all(rt: &tokio::runtime::Runtime, pki: &Pki, cfg: &Config) -> anyhow::Result<Vec<Run>> {
    let max = cfg.sizes.iter().copied().max().unwrap_or(0);
    eprintln!("issuing {max} agent certificates");
    let t = Instant::now();
    let ids = sim::identities(pki, max)?;
    eprintln!("  done in {:.1} s", t.elapsed().as_secs_f64());
    let mut runs = Vec::new();
    for &n in &cfg.sizes {
        runs.push(run_one(rt, pki, cfg, &ids[..n])?);
    }
    Ok(runs)
}

/// One fleet size on a fresh server.
fn run_one(
    rt: &tokio::runtime::Runtime,
    pki: &Pki,
    cfg: &Config,
    ids: &[Identity],
) -> anyhow::Result<Run> {
    let n = ids.len();
    eprintln!("--- {n} agents ---");
    let mut server = ServerProc::start(
        pki,
        ServerOptions {
            uds: true,
            args: cfg.server_args.clone(),
            ..Default::default()
        },
    )?;
    let uds = server.uds.clone().context("server without --uds")?;
    let admin = server.admin_addr;
    let pid = server.proc.pid().context("server not running")?;
    let rss_empty = crate::bench::sys::rss_kib(pid)?;
    let t0 = Instant::now();
    let fleet =
        rt.block_on(async { Fleet::start(ids, server.agent_addr, cfg.per_endpoint, &cfg.agent) })?;
    let cold_done = AtomicBool::new(false);
    let cold = rt.block_on(probe::wait_registered(
        admin,
        n,
        t0,
        cfg.register_limit,
        &cold_done,
    ));
    eprintln!(
        "cold start: {}/{n} registered in {:.1} s",
        cold.registered, cold.secs
    );

    rt.block_on(async { tokio::time::sleep(cfg.settle).await });
    let idle = rt
        .block_on(probe::idle(pid, &fleet, cfg.idle, rss_empty))
        .map_err(|e| format!("{e:#}"));
    if let Ok(i) = &idle {
        eprintln!(
            "idle {:.0} s: server RSS {} MiB, {:.1} % of a core",
            i.secs,
            i.rss_kib / 1024,
            i.server_cores * 100.0
        );
    }
    let dial_limit = Duration::from_secs(60);
    let never = AtomicBool::new(false);
    let idle_dials = rt.block_on(probe::dials(
        &uds, &fleet, t0, cfg.dials, dial_limit, &never,
    ));
    eprintln!(
        "idle dials: {} ok, {} failed, p99 {:.2} ms",
        idle_dials.ok, idle_dials.failed, idle_dials.p99_ms
    );

    // kill -9, then a new server on the same ports at once; the clock runs
    // from the kill.
    let killed = Instant::now();
    server.proc.kill();
    server.restart()?;
    eprintln!(
        "server restarted after {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    let done = AtomicBool::new(false);
    let (restart, storm_dials) = rt.block_on(async {
        tokio::join!(
            probe::wait_registered(admin, n, killed, cfg.register_limit, &done),
            // Dials only to agents already back, until all are back.
            probe::dials(&uds, &fleet, killed, cfg.dials, cfg.register_limit, &done),
        )
    });
    eprintln!(
        "after kill -9: {}/{n} registered in {:.1} s; storm dials {} ok, {} failed",
        restart.registered, restart.secs, storm_dials.ok, storm_dials.failed
    );
    let noticed = fleet.noticed_loss_since(killed);
    let counters = fleet.counters();
    rt.block_on(fleet.stop());
    server.proc.stop(Duration::from_secs(5));
    Ok(Run {
        agents: n,
        cold,
        idle,
        idle_dials,
        restart,
        storm_dials,
        noticed_p50: pct(&noticed, 50.0),
        noticed_max: noticed.last().copied(),
        noticed: noticed.len(),
        counters,
    })
}

fn pct(sorted: &[Duration], p: f64) -> Option<Duration> {
    (!sorted.is_empty()).then(|| crate::bench::measure::percentile(sorted, p))
}
