//! Starting the hub: open the cache, set up TLS, bind (both listeners), probe, serve.

use std::sync::Arc;
use std::time::Duration;

use autonomy_cache::{AutonomyCache, CacheConfig, ResetReason};
use hyper::header::HeaderValue;
use rustls_pki_types::ServerName;

use crate::cert_files::ReloadingCertFiles;
use crate::filters::Filters;
use crate::health::HealthPolicy;
use crate::metrics::HubMetrics;
use crate::prober::HubHealth;
use crate::record::CacheFailures;
use crate::server::{self, Hub};
use crate::serving::{self, IssuedSlot, IssuerCtx, ServingCert};
use crate::settings::{ApiserverTarget, HubConfig, ServingSource};
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
    #[error("--hub-serving-cert: {0}")]
    ServingCert(String),
    #[error("HTTPS listener TLS: {0}")]
    ServingTls(#[from] rustls::Error),
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
    let https = match cfg.https_addr {
        Some(addr) => bind_https(cfg, addr).await?,
        None => None,
    };
    let mut filter_settings = cfg.filters.clone();
    if https.is_none() && filter_settings.masterservice.take().is_some() {
        tracing::warn!("--hub-filter-masterservice is off: the HTTPS listener is not serving, and pods must not be pointed at it");
    }
    tracing::info!(addr = %cfg.listen, upstream = ?cfg.upstream, cache_dir = %cfg.cache_dir.display(),
        masterservice = ?filter_settings.masterservice, topology = filter_settings.topology,
        pool_label = %filter_settings.pool_label, "node proxy listening");
    let stats = tokio::spawn(export_cache_stats(cache.clone(), metrics.clone()));
    status.set_running(health.clone(), cache.clone());
    let filters = Filters::new(filter_settings, cache.clone());
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
    let mut tasks = vec![prober, stats];
    if let Some((https_listener, cert)) = https {
        let acceptor = tokio_rustls::TlsAcceptor::from(serving::server_config(cert.clone())?);
        if matches!(*cert, ServingCert::Issued(_)) {
            if let Some(ip) = cfg.https_addr.map(|a| a.ip()) {
                tasks.push(tokio::spawn(serving::run_issuer(IssuerCtx {
                    client: hub.client.clone(),
                    node: cfg.node_name.clone(),
                    ip,
                    dir: cfg.cache_dir.join(serving::SERVING_DIR),
                    cert,
                })));
            }
        }
        tasks.push(tokio::spawn(server::serve_https(
            https_listener,
            acceptor,
            hub.clone(),
        )));
    }
    tasks.push(tokio::spawn(server::serve(listener, hub)));
    Ok(RunningHub { tasks })
}

/// Binds the pods' listener and sets up its certificate. A bind failure
/// (the address is not on this node) is logged and leaves the listener
/// off rather than the whole hub; unusable `--hub-serving-cert` files are
/// an error, as other certificate files are.
async fn bind_https(
    cfg: &HubConfig,
    addr: std::net::SocketAddr,
) -> Result<Option<(tokio::net::TcpListener, Arc<ServingCert>)>, HubStartError> {
    let cert = match &cfg.serving {
        ServingSource::Files { cert, key } => ServingCert::Files(
            ReloadingCertFiles::new("hub serving certificate", cert, key)
                .map_err(HubStartError::ServingCert)?,
        ),
        ServingSource::Csr => ServingCert::Issued(IssuedSlot::default()),
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!(%addr, certificate = ?cfg.serving, "node proxy HTTPS listener for pods");
            Ok(Some((l, Arc::new(cert))))
        }
        Err(e) => {
            tracing::error!(%addr, error = %e,
                "binding --hub-https-addr failed: no HTTPS listener for pods (is the address on an interface of this node? see --hub-https-addr in docs/operations.md)");
            Ok(None)
        }
    }
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
