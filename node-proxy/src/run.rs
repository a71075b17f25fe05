//! Starting the hub: open the cache, set up TLS, bind, probe, serve.

use std::sync::Arc;
use std::time::Duration;

use autonomy_cache::{AutonomyCache, CacheConfig, ResetReason};
use hyper::header::HeaderValue;
use rustls_pki_types::ServerName;

use crate::filters::Filters;
use crate::health::HealthPolicy;
use crate::metrics::HubMetrics;
use crate::prober::HubHealth;
use crate::record::CacheFailures;
use crate::server::{self, Hub};
use crate::settings::{ApiserverTarget, HubConfig};
use crate::status::HubStatus;
use crate::upstream::{UpstreamClient, UpstreamDialer};
use crate::upstream_tls::{UpstreamTls, UpstreamTlsError};

/// Connection setup (dial + TLS) to the apiserver may take this long: enough
/// for a handshake over a 40 KB/s link.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Group-commit window of the cache: writes arriving within it share one fsync.
const COMMIT_INTERVAL: Duration = Duration::from_millis(2);

/// The hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubStartError {
    #[error(transparent)]
    Tls(#[from] UpstreamTlsError),
    #[error("--hub-apiserver-server-name {0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("binding --hub-addr {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The running hub's tasks; dropping it does not stop them, [`RunningHub::stop`] does.
pub struct RunningHub {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningHub {
    /// Stops listening and probing.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Opens the cache and starts serving `cfg.listen`, reaching the apiserver through `dialer`.
pub async fn start(
    cfg: &HubConfig,
    dialer: Arc<dyn UpstreamDialer>,
    metrics: HubMetrics,
    status: &HubStatus,
) -> Result<RunningHub, HubStartError> {
    let cache = open_cache(cfg);
    let tls = UpstreamTls::load(
        cfg.apiserver_ca.as_deref(),
        &cfg.client_cert,
        &cfg.client_key,
    )?;
    let server_name = ServerName::try_from(cfg.server_name.clone())
        .map_err(|_| HubStartError::ServerName(cfg.server_name.clone()))?;
    let host = match &cfg.upstream {
        ApiserverTarget::Direct { host, port } if host.contains(':') => format!("[{host}]:{port}"),
        ApiserverTarget::Direct { host, port } => format!("{host}:{port}"),
        ApiserverTarget::Tunnel => cfg.server_name.clone(),
    };
    let host = HeaderValue::from_str(&host).map_err(|_| HubStartError::ServerName(host))?;
    let liveness = dialer.liveness();
    let client = UpstreamClient::new(dialer, tls, server_name, host, CONNECT_TIMEOUT);
    let policy = HealthPolicy {
        online_after: cfg.probe.online_after,
        ..HealthPolicy::default()
    };
    let health = HubHealth::new(policy, metrics.clone(), client.clone());
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| HubStartError::Bind {
            addr: cfg.listen,
            source,
        })?;
    tracing::info!(addr = %cfg.listen, upstream = ?cfg.upstream, cache_dir = %cfg.cache_dir.display(),
        masterservice = ?cfg.filters.masterservice, topology = cfg.filters.topology,
        pool_label = %cfg.filters.pool_label, "node proxy listening");
    let stats = tokio::spawn(export_cache_stats(cache.clone(), metrics.clone()));
    status.set_running(health.clone(), cache.clone());
    let filters = Filters::new(cfg.filters.clone(), cache.clone());
    let hub = Arc::new(Hub {
        client,
        health: health.clone(),
        filters,
        cache,
        components: cfg.components.clone(),
        failures: CacheFailures::new(metrics.clone()),
        metrics,
    });
    let prober = tokio::spawn(health.run_prober(cfg.probe.clone(), liveness));
    let serving = tokio::spawn(server::serve(listener, hub));
    Ok(RunningHub {
        tasks: vec![prober, serving, stats],
    })
}

/// Opens the cache; when not even a fresh file can be used the hub runs
/// without one (proxy only) rather than not at all.
fn open_cache(cfg: &HubConfig) -> AutonomyCache {
    let opened = AutonomyCache::open(CacheConfig {
        dir: cfg.cache_dir.clone(),
        max_bytes: cfg.cache_max_bytes,
        gc_after: cfg.cache_gc_after,
        commit_interval: COMMIT_INTERVAL,
    });
    match opened {
        Ok(cache) => cache,
        Err(err) => {
            tracing::error!(error = %err, cache_dir = %cfg.cache_dir.display(),
                "autonomy cache unavailable: the node proxy only forwards (no offline answers)");
            AutonomyCache::disabled(err.to_string())
        }
    }
}

/// How often the cache's size and refusals are copied into the metrics.
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Copies [`AutonomyCache::stats`] into the gauges, forever.
async fn export_cache_stats(cache: AutonomyCache, metrics: HubMetrics) {
    let mut tick = tokio::time::interval(STATS_INTERVAL);
    let mut resets_seen = [0u64; 4];
    loop {
        tick.tick().await;
        let stats = cache.stats();
        for (i, reason) in ResetReason::ALL.iter().enumerate() {
            let new = stats.resets[i].saturating_sub(resets_seen[i]);
            metrics
                .cache_resets
                .with_label_values(&[reason.label()])
                .inc_by(new);
            resets_seen[i] = stats.resets[i];
        }
        metrics
            .cache_bytes
            .set(i64::try_from(stats.bytes_used).unwrap_or(i64::MAX));
        metrics
            .cache_refused_writes
            .set(i64::try_from(stats.refused_writes).unwrap_or(i64::MAX));
    }
}
