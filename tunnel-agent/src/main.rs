//! `tunnel-agent` binary: parse flags once, then connect forever (or run a subcommand).

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use tunnel_agent::check_config;
use tunnel_agent::config::{AgentConfig, Cli};
use tunnel_agent::node_setup::{self, NodeSetupArgs};

fn main() -> anyhow::Result<()> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let sub = transport::cli::take_subcommand(&mut argv, &[check_config::SUBCOMMAND, "node-setup"]);
    if sub.as_deref() == Some("node-setup") {
        let args = NodeSetupArgs::parse_from(argv);
        print!("{}", node_setup::run(&args)?);
        return Ok(());
    }
    let args = transport::cli::expand_config_file(argv)?;
    let cfg = AgentConfig::try_from(parse(args))?;
    if sub.is_some() {
        let report = check_config::check(
            &cfg,
            tunnel_agent::agent::hostname(),
            rustls::pki_types::UnixTime::now(),
        )
        .context("configuration check failed")?;
        print!("tunnel-agent configuration OK; it would run with:\n{report}");
        return Ok(());
    }
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

/// The command line as clap parses it, with the subcommands in the help.
fn parse(args: Vec<std::ffi::OsString>) -> Cli {
    let matches = Cli::command()
        .after_help(
            "Also:\n  tunnel-agent check-config [FLAGS]  parse these flags and --config like a real run, \
             check the certificates, print what would run (exit 1 with the reason otherwise)\n  \
             tunnel-agent node-setup [--apply|--revert]  point kubelet's kubeconfig at the node proxy \
             (see tunnel-agent node-setup --help)",
        )
        .get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}
