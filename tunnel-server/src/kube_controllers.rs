//! Starts the Kubernetes controllers the configuration asks for (`--autonomy-controller`,
//! `--approve-hub-csrs`), each supervised in a task of its own: a controller that fails or
//! panics is restarted with backoff and never stops the server.

use anyhow::Context;
use tokio::task::JoinSet;

use crate::config::ControllerConfig;
use crate::metrics::ServerMetrics;

/// Builds the kube client (an unreadable `--kubeconfig` fails startup, naming the file) and
/// spawns the controllers into `tasks`.
pub async fn start(
    cfg: &ControllerConfig,
    metrics: &ServerMetrics,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    if !cfg.any() {
        return Ok(());
    }
    let client = controllers::client(cfg.kubeconfig.as_deref())
        .await
        .context("starting the Kubernetes controllers")?;
    let metrics = controllers::ControllerMetrics::register(metrics.registry())
        .context("registering the controllers' metrics")?;
    if cfg.autonomy {
        let (client, metrics) = (client.clone(), metrics.clone());
        tasks.spawn(controllers::supervise("autonomy", move || {
            controllers::autonomy::run(client.clone(), metrics.clone())
        }));
    }
    if let Some(ips) = &cfg.hub_csr_ips {
        let ips = ips.clone();
        tasks.spawn(controllers::supervise("hub-csr", move || {
            controllers::hub_csr::run(client.clone(), ips.clone(), metrics.clone())
        }));
    }
    Ok(())
}
