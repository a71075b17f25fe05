//! Starting the agent from a validated configuration.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use node_proxy::run::RunningHub;
use node_proxy::settings::{ApiserverTarget, HubConfig, HubSetting};
use node_proxy::status::HubStatus;
use node_proxy::upstream::{DirectDialer, UpstreamDialer};
use tokio::sync::watch;
use transport::admin::{AdminResponse, StatusCode};
use transport::quic::QuicTuning;

use crate::allowlist::Allowlist;
use crate::config::AgentConfig;
use crate::connector::Connector;
use crate::edge::EdgeDialer;
use crate::link::AgentLink;
use crate::metrics::AgentMetrics;
use crate::proxy::HttpProxy;
use crate::servers::{ServerTarget, Supervisor};
use crate::tls_files::AgentTlsFiles;
use crate::tunnel_dialer::TunnelDialer;

/// A running agent; [`RunningAgent::shutdown`] closes the connection gracefully.
pub struct RunningAgent {
    /// Opens edge→cloud service streams on any usable server connection.
    pub link: AgentLink,
    stop: watch::Sender<bool>,
    connector: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<()>,
    renewal: tokio::task::JoinHandle<()>,
    hub: Option<RunningHub>,
}

impl RunningAgent {
    /// Tells the server we are leaving (so it fails our streams at once) and stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), self.connector).await;
        self.admin.abort();
        self.renewal.abort();
        if let Some(hub) = self.hub {
            hub.stop();
        }
    }
}

/// Binds the admin endpoint, waits for usable certificates (enrolling if needed) and starts
/// connecting and renewing.
pub async fn start(cfg: AgentConfig) -> anyhow::Result<RunningAgent> {
    let metrics = AgentMetrics::new().context("registering metrics")?;
    let connected = Arc::new(AtomicUsize::new(0));
    let admin_listener = transport::admin::bind(cfg.admin_addr)
        .await
        .with_context(|| format!("binding --admin-addr {}", cfg.admin_addr))?;
    let admin_metrics = metrics.clone();
    let admin_connected = connected.clone();
    let hub_status = HubStatus::default();
    let admin_hub = hub_status.clone();
    // 200 while connected to at least one server (the tunnel works, whatever
    // the hub's state); the body says what is wrong with the node proxy.
    let handler: transport::admin::AdminHandler = Arc::new(move |path, _query| match path {
        "/healthz" => AdminResponse::text(StatusCode::OK, "ok\n"),
        "/readyz" if admin_connected.load(Ordering::Acquire) > 0 => AdminResponse::text(
            StatusCode::OK,
            format!(
                "connected to {} server(s); {}\n",
                admin_connected.load(Ordering::Acquire),
                admin_hub.summary()
            ),
        ),
        "/readyz" => AdminResponse::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not connected to the server; {}\n", admin_hub.summary()),
        ),
        "/metrics" => {
            let mut r = AdminResponse::text(StatusCode::OK, admin_metrics.render());
            r.content_type = "text/plain; version=0.0.4; charset=utf-8";
            r
        }
        _ => AdminResponse::text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics /healthz /readyz\n",
        ),
    });
    let admin = tokio::spawn(transport::admin::serve(admin_listener, handler));
    // Waits (admin endpoint up, /readyz 503) until the certificate files are usable,
    // enrolling first when there are none and a bootstrap token was given.
    let tls = AgentTlsFiles {
        cert: cfg.tls_cert.clone(),
        key: cfg.tls_key.clone(),
        server_ca: cfg.server_ca.clone(),
        metrics: metrics.clone(),
    };
    let cert_endpoint = crate::enroll::Endpoint {
        host: cfg.server_host.clone(),
        port: cfg.server_port,
        timeout: cfg.connect_timeout * 3,
    };
    let wanted = certs::NodeIdentity {
        node_name: cfg.node_name.clone().or_else(hostname).unwrap_or_default(),
        node_ips: cfg.node_ips.clone(),
    };
    let identity = crate::tls_files::wait_until_usable(
        &tls,
        cfg.bootstrap_token.as_ref(),
        &wanted,
        &cert_endpoint,
    )
    .await
    .identity;
    let node_name = match cfg.node_name.clone() {
        Some(n) => n,
        None => hostname().unwrap_or_else(|| identity.node_name.clone()),
    };
    if node_name != identity.node_name {
        tracing::warn!(%node_name, certificate_node = %identity.node_name,
            "--node-name differs from the certificate; the server will refuse this agent");
    }
    let node_ips = if cfg.node_ips.is_empty() {
        identity.node_ips.clone()
    } else {
        cfg.node_ips.clone()
    };
    let allow = if cfg.allow.is_empty() {
        Allowlist::default_for(&node_ips)
    } else {
        Allowlist::new(cfg.allow.clone())
    };
    let rules: Vec<String> = allow.rules().iter().map(ToString::to_string).collect();
    tracing::info!(node = %node_name, ips = ?node_ips, allow = ?rules, "agent starting");

    let proxy = HttpProxy::select(
        cfg.proxy.as_deref(),
        |k| std::env::var(k).ok(),
        &cfg.server_host,
    )?;
    if let Some(p) = &proxy {
        tracing::info!(proxy = %format!("{}:{}", p.host, p.port), "WebSocket connections go through an HTTP proxy");
    }
    let (link_publishers, link) = crate::link::channel();
    let renewal = tokio::spawn(crate::renew::run(tls.clone(), link.clone()));
    // The node proxy serves from its cache whether or not the server is
    // reachable, so it starts before the first connection attempt.
    let hub = match &cfg.hub {
        HubSetting::Off(reason) => {
            tracing::info!(reason, "node proxy (hub) not started");
            None
        }
        HubSetting::On(hub_cfg) => {
            let mut hub_cfg = hub_cfg.clone();
            hub_cfg.filters.node_name = node_name.clone();
            hub_cfg.node_name = node_name.clone();
            let hub_cfg = &hub_cfg;
            if let (Some(name), Some(addr)) = (&cfg.hub_interface, hub_cfg.https_addr) {
                // Without the address the HTTPS listener cannot bind, and
                // the hub runs without it (masterservice off), as it does
                // when the address is missing for any other reason.
                if let Err(err) = crate::hub_interface::ensure(name, addr.ip()) {
                    tracing::error!(error = %err, "HTTPS listener address not set up");
                }
            }
            let dialer = hub_dialer(hub_cfg, &link);
            // A hub that cannot start must not take the tunnel down with it.
            match node_proxy::run::start(hub_cfg, dialer, metrics.hub.clone(), &hub_status).await {
                Ok(hub) => Some(hub),
                Err(err) => {
                    tracing::error!(error = %err,
                        "node proxy (hub) failed to start; the tunnel runs without it");
                    hub_status.set_failed(err.to_string());
                    None
                }
            }
        }
    };
    let dialer = Arc::new(EdgeDialer {
        allow,
        dial_timeout: cfg.dial_timeout,
        metrics: metrics.clone(),
    });
    let session = format!("{:016x}", rand::random::<u64>());
    let resolve = proxy.is_none();
    let connector_metrics = metrics.clone();
    let make_connector = move |target: ServerTarget| Connector {
        server_key: target.key(),
        server_host: target.name.host,
        server_port: target.name.port,
        server_addr: target.addr,
        node_name: node_name.clone(),
        node_ips: node_ips.clone(),
        transport: cfg.transport,
        tls: tls.clone(),
        proxy: proxy.clone(),
        quic_probe_interval: cfg.quic_probe_interval,
        session: session.clone(),
        tuning: QuicTuning {
            keep_alive: cfg.keepalive,
            idle_timeout: cfg.idle_timeout,
            congestion: cfg.congestion_control,
            max_incoming_streams: transport::quic::AGENT_STREAM_CREDIT,
            ..QuicTuning::default()
        },
        connect_timeout: cfg.connect_timeout,
        dialer: dialer.clone(),
        metrics: connector_metrics.clone(),
        connected: connected.clone(),
        up: AtomicBool::new(false),
        link: link_publishers.publisher(),
    };
    let supervisor = Supervisor {
        names: cfg.servers.clone(),
        resolve,
        interval: cfg.server_resolve_interval,
        connector: make_connector,
        metrics: metrics.clone(),
    };

    let (stop, stop_rx) = watch::channel(false);
    let connector = tokio::spawn(supervisor.run(stop_rx));
    Ok(RunningAgent {
        link,
        stop,
        connector,
        admin,
        renewal,
        hub,
    })
}

/// How the node proxy reaches the apiserver: directly, or (`--apiserver
/// tunnel`) over this agent's own server connection to the server's `--apiserver`.
fn hub_dialer(cfg: &HubConfig, link: &AgentLink) -> Arc<dyn UpstreamDialer> {
    match &cfg.upstream {
        ApiserverTarget::Direct { host, port } => Arc::new(DirectDialer {
            host: host.clone(),
            port: *port,
        }),
        ApiserverTarget::Tunnel => Arc::new(TunnelDialer { link: link.clone() }),
    }
}

/// The kernel hostname, lowercased: the default node name.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
}
