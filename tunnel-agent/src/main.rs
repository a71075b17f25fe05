//! `tunnel-agent` binary: parse flags once, then connect forever.

use clap::Parser;
use tunnel_agent::config::{AgentConfig, Cli};

fn main() -> anyhow::Result<()> {
    let args = transport::cli::expand_config_file(std::env::args_os().collect())?;
    let cfg = AgentConfig::try_from(Cli::parse_from(args))?;
    transport::cli::init_tracing();
    transport::cli::raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let agent = tunnel_agent::agent::start(cfg).await?;
        transport::cli::wait_for_shutdown_signal().await;
        tracing::info!("shutting down: closing the server connection");
        agent.shutdown().await;
        Ok(())
    })
}
