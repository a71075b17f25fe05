//! `tunnel-server` binary: parse flags once, then serve or run a subcommand.

use clap::Parser;
use tunnel_server::config::{Cli, Command, ServerConfig};

fn main() -> anyhow::Result<()> {
    let args = transport::cli::expand_config_file(std::env::args_os().collect())?;
    let cli = Cli::parse_from(args);
    if let Some(Command::Certs(cmd)) = cli.command {
        return tunnel_server::certs_cmd::run(cmd);
    }
    let cfg = ServerConfig::try_from(cli.run)?;
    transport::cli::init_tracing();
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = tunnel_server::server::start(cfg).await?;
        transport::cli::wait_for_shutdown_signal().await;
        tracing::info!("shutting down: closing agent connections");
        server.shutdown().await;
        Ok(())
    })
}

/// Thousands of agents and front-end connections need more than the usual 1024 descriptors.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
}
