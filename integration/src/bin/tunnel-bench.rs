//! Loopback benchmark: direct TCP versus the tunnel (HTTP CONNECT, Konnectivity
//! gRPC, SNI passthrough, WebSocket), `ssh -R` and rathole.
//!
//! ```text
//! cargo build --release -p tunnel-server -p tunnel-agent -p integration
//! cargo run --release -p integration --bin tunnel-bench -- [--bytes N] [--connections N] [--idle N] [--only ...]
//! ```
//!
//! Prints a Markdown table on stdout; progress goes to stderr.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use integration::bench::{self, PathName, Phase};

#[derive(Debug, Parser)]
#[command(
    about = "Loopback throughput, connection latency and idle memory: direct TCP vs tunnel vs ssh -R vs rathole"
)]
struct Args {
    /// Bytes sent per throughput run (single stream; shared by all streams in the multi-stream run).
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Concurrent connections in the multi-stream run.
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Sequential new connections timed for latency.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Idle connections held open for the memory measurement.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Paths to measure (comma-separated); default: all.
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<PathName>,
    /// Measurements to run (comma-separated); default: all.
    #[arg(long, value_delimiter = ',', value_enum)]
    phases: Vec<Phase>,
    /// Upper bound for any single measurement, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// RUST_LOG for tunnel-server, tunnel-agent and rathole (their default is info).
    #[arg(long, default_value = "info")]
    rust_log: String,
    /// Extra tunnel-server flag (repeatable), e.g. `--server-arg=--max-streams=50000`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Extra tunnel-agent flag (repeatable).
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
    /// Directory with tunnel-server and tunnel-agent (default: next to this executable).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// rathole executable (default: PATH, then ~/.cargo/bin).
    #[arg(long)]
    rathole: Option<PathBuf>,
    /// Keep each path's temporary directory (configs, keys, logs).
    #[arg(long)]
    keep: bool,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let bin_dir = match a.bin_dir {
        Some(d) => d,
        None => bench::procs::workspace_bin_dir()?,
    };
    for b in ["tunnel-server", "tunnel-agent"] {
        let p = bin_dir.join(b);
        anyhow::ensure!(
            p.is_file(),
            "{} not found: cargo build --release -p tunnel-server -p tunnel-agent",
            p.display()
        );
    }
    // Each idle connection costs the bench two descriptors on the direct
    // path (client + echo side), more with headroom for the other phases.
    let want = (a.idle as u64) * 2 + 1024;
    let nofile = bench::sys::raise_nofile(want)?;
    anyhow::ensure!(
        nofile >= want,
        "open-files limit {nofile} is below the {want} needed for --idle {}; raise the hard limit or lower --idle",
        a.idle
    );
    let cfg = bench::Config {
        bytes: a.bytes,
        streams: a.streams.max(1),
        connections: a.connections,
        idle: a.idle,
        paths: if a.only.is_empty() {
            vec![
                PathName::Direct,
                PathName::Tunnel,
                PathName::TunnelTls,
                PathName::TunnelGrpc,
                PathName::TunnelGrpcGo,
                PathName::TunnelEdgeTls,
                PathName::TunnelSni,
                PathName::TunnelWs,
                PathName::TunnelPeer,
                PathName::Ssh,
                PathName::Rathole,
            ]
        } else {
            a.only
        },
        phases: if a.phases.is_empty() {
            vec![
                Phase::Memory,
                Phase::Latency,
                Phase::Single,
                Phase::Download,
                Phase::Multi,
            ]
        } else {
            a.phases
        },
        limit: Duration::from_secs(a.timeout),
        rust_log: a.rust_log,
        server_args: a.server_args,
        agent_args: a.agent_args,
        bin_dir,
        rathole: a.rathole,
        keep: a.keep,
    };
    // Two workers: the machine this is written for has two cores, and the
    // bench's senders and sink should not outnumber them.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let t0 = Instant::now();
    // On Ctrl-C the run future is dropped, and with it the processes under
    // test (their destructors stop them), instead of leaving them orphaned.
    let rows = rt.block_on(async {
        tokio::select! {
            r = bench::run(&cfg) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    })?;
    println!("{}\n", bench::header(&cfg));
    print!("{}", bench::report::markdown(&rows, cfg.streams, cfg.idle));
    println!("\nRun time: {:.0} s.", t0.elapsed().as_secs_f64());
    Ok(())
}
