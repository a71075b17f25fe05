//! `tunnel-server` binary: parse flags once, then serve or run a subcommand.

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use tunnel_server::check_config;
use tunnel_server::config::{Cli, Command, ServerConfig};

fn main() -> anyhow::Result<()> {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let check = transport::cli::take_subcommand(&mut argv, &[check_config::SUBCOMMAND]);
    let args = transport::cli::expand_config_file(argv.clone())?;
    let cli = parse(args);
    if let Some(Command::Certs(cmd)) = cli.command {
        anyhow::ensure!(
            check.is_none(),
            "check-config takes the serving flags, not a subcommand"
        );
        return tunnel_server::certs_cmd::run(cmd);
    }
    let cfg = ServerConfig::try_from(cli.run)?;
    if check.is_some() {
        let report = check_config::check(&cfg, rustls::pki_types::UnixTime::now())
            .context("configuration check failed")?;
        print!("tunnel-server configuration OK; it would run with:\n{report}");
        return Ok(());
    }
    transport::cli::init_tracing();
    transport::cli::raise_fd_limit();
    // Every log line of this process carries the replica's name: each runtime
    // thread (and the main one) stays inside the `server` span for good.
    let span = tracing::info_span!("server", server_id = %cfg.replicas.server_id);
    let thread_span = span.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(move || std::mem::forget(thread_span.clone().entered()))
        .build()?;
    let _main_span = span.entered();
    let drain_timeout = cfg.replicas.drain_timeout;
    rt.block_on(async move {
        let mut server = tunnel_server::server::start(cfg).await?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let shutdown = transport::cli::wait_for_shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = hup.recv() => {
                    server.reload_certificates();
                    reload(&mut server, &argv).await
                }
            }
        }
        tracing::info!("shutting down: draining, then closing agent connections");
        server.drain(drain_timeout).await;
        Ok(())
    })
}

/// SIGHUP: re-reads the config file and command line and applies the
/// `--forward` set; other flags need a restart. A bad config is logged and
/// the running forwards stay as they are.
async fn reload(server: &mut tunnel_server::server::RunningServer, argv: &[std::ffi::OsString]) {
    let parsed = transport::cli::expand_config_file(argv.to_vec())
        .map_err(|e| e.to_string())
        .and_then(|args| Cli::try_parse_from(args).map_err(|e| e.to_string()))
        .and_then(|cli| ServerConfig::try_from(cli.run).map_err(|e| e.to_string()));
    match parsed {
        Ok(cfg) => {
            let errors = server.reload_forwards(&cfg.forwards).await;
            for e in &errors {
                tracing::error!(error = %e, "SIGHUP: forward not started");
            }
            tracing::info!(forwards = cfg.forwards.len(), failed = errors.len(),
                "SIGHUP: configuration reloaded (only --forward changes take effect without a restart)");
        }
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: configuration invalid; keeping the running forwards")
        }
    }
}

/// The command line as clap parses it, with the `check-config` subcommand in the help.
fn parse(args: Vec<std::ffi::OsString>) -> Cli {
    let matches = Cli::command()
        .after_help(
            "Also: tunnel-server check-config [FLAGS]  parse these flags and --config like a real \
             run, check the certificates, print what would run (exit 1 with the reason otherwise)",
        )
        .get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}
