//! Fleet benchmark: N simulated agents (real QUIC connections, certificates
//! and hellos, in this one process) against the real `tunnel-server`.
//!
//! ```text
//! cargo build --release -p tunnel-server -p integration --bins
//! target/release/fleet-bench --agents 1000,5000,10000
//! ```
//!
//! Prints a Markdown table on stdout; progress goes to stderr. See
//! `integration::fleet` for what is measured and `docs/benchmarks.md`
//! ("Fleet") for results.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use integration::bench::sys;
use integration::fleet::{self, sim::AgentSettings};

#[derive(Debug, Parser)]
#[command(
    about = "Cold start, idle cost, dials and recovery after kill -9 of tunnel-server with N simulated agents"
)]
struct Args {
    /// Fleet sizes (comma-separated), each on a fresh server.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    agents: Vec<usize>,
    /// Idle measurement window in seconds.
    #[arg(long, default_value_t = 30)]
    idle_secs: u64,
    /// Seconds between "all registered" and the idle window.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Dials while idle (and at most as many during the storm).
    #[arg(long, default_value_t = 500)]
    dials: usize,
    /// Limit for all agents to register, after a cold start and after kill -9.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Agent connections per quinn client endpoint (UDP socket).
    #[arg(long, default_value_t = 1000)]
    per_endpoint: usize,
    /// Bidirectional streams each simulated agent lets the server open (the
    /// real agent: 25,000; see `AgentSettings::from_agent_flags`).
    #[arg(long, default_value_t = 256)]
    stream_credit: u32,
    /// Extra tunnel-server flag (repeatable), e.g. `--server-arg=--per-node-metrics=false`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// tunnel-agent flag the simulated agents take their settings from
    /// (repeatable), e.g. `--agent-arg=--keepalive=10s`.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        a.agents.iter().all(|&n| n > 0),
        "--agents sizes must be positive"
    );
    let server = integration::bench::procs::workspace_bin_dir()?.join("tunnel-server");
    anyhow::ensure!(
        server.is_file(),
        "{} not found: cargo build --release -p tunnel-server -p integration --bins",
        server.display()
    );
    // Dials use one descriptor each on the client side; the agents share
    // a few UDP sockets. The server raises its own limit.
    transport::cli::raise_fd_limit();
    let agent = AgentSettings::from_agent_flags(&a.agent_args, a.stream_credit)?;
    let cfg = fleet::Config {
        sizes: a.agents,
        idle: Duration::from_secs(a.idle_secs),
        settle: Duration::from_secs(a.settle_secs),
        dials: a.dials,
        register_limit: Duration::from_secs(a.timeout),
        per_endpoint: a.per_endpoint,
        agent,
        server_args: a.server_args,
    };
    // Two workers: the machine this is written for has two cores.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let dir = tempfile::tempdir()?;
    let pki = integration::Pki::new(dir.path())?;
    let t0 = Instant::now();
    let load_before = sys::loadavg();
    let runs = fleet::run_all(&rt, &pki, &cfg)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let header = format!(
        "Machine: {} ({cores} cores); 1-min load average {load_before} before, {} after. \
         Agents: keep-alive {:?}, idle timeout {:?}, connect timeout {:?}, stream credit {}, \
         {} per UDP socket. Idle window {} s; {} dials; server flags: defaults{}.",
        sys::cpu_model(),
        sys::loadavg(),
        cfg.agent.tuning.keep_alive,
        cfg.agent.tuning.idle_timeout,
        cfg.agent.connect_timeout,
        cfg.agent.tuning.max_incoming_streams,
        cfg.per_endpoint,
        a.idle_secs,
        cfg.dials,
        if cfg.server_args.is_empty() {
            String::new()
        } else {
            format!(" plus {}", cfg.server_args.join(" "))
        },
    );
    print!("{}", fleet::report::markdown(&runs, &header));
    println!("\nRun time: {:.0} s.", t0.elapsed().as_secs_f64());
    Ok(())
}
