//! Starting every listener of the server from a validated configuration.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use transport::quic::QuicTuning;

use crate::agents::AgentListener;
use crate::config::{PassthroughConfig, ServerConfig};
use crate::dial::Dialer;
use crate::enroll::{AgentPortTls, Issuer};
use crate::forward::{ForwardBindError, ForwardSpec, Forwards};
use crate::frontend::{listeners, sni, transparent, FrontendContext};
use crate::metrics::ServerMetrics;
use crate::registry::AgentRegistry;
use crate::reload::{Reloader, ServerTls, TlsFiles};
use crate::revocation::Revocations;
use crate::services::ServiceContext;
use tokio::sync::Notify;

/// Shortest drain: how long a replica keeps serving new front-end requests
/// after `/readyz` turned 503, even with no stream open.
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A running server: its tasks and the handle to stop it gracefully.
pub struct RunningServer {
    pub registry: Arc<AgentRegistry>,
    dialer: Arc<Dialer>,
    /// Tells agent connections this replica is leaving.
    drain: tokio::sync::watch::Sender<bool>,
    /// `/readyz` answers 503 once set.
    draining: Arc<AtomicBool>,
    endpoint: quinn::Endpoint,
    tasks: JoinSet<()>,
    forwards: Forwards,
    reload_trigger: Arc<Notify>,
    hosts_file: Option<crate::hosts_file::HostsFile>,
}

impl RunningServer {
    /// Replaces the running `--forward` set (SIGHUP): new listeners start,
    /// removed ones stop, open connections continue. Forwards that could not
    /// be bound are returned (and not running).
    pub async fn reload_forwards(&mut self, desired: &[ForwardSpec]) -> Vec<ForwardBindError> {
        self.forwards.apply(desired).await
    }

    /// Reloads the TLS files and the deny list now (SIGHUP) instead of at the next poll.
    pub fn reload_certificates(&self) {
        self.reload_trigger.notify_one();
    }

    /// SIGTERM: `/readyz` turns 503 at once, agents are told this replica is
    /// leaving (no new edge→cloud streams here), new front-end requests go
    /// through peers where one has the node (local agents otherwise), and
    /// open streams get up to `timeout` to finish; then [`Self::shutdown`].
    pub async fn drain(self, timeout: std::time::Duration) {
        self.draining.store(true, Ordering::Release);
        self.dialer.set_draining();
        self.drain.send_replace(true);
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        // Clients (a Service's endpoints, a load balancer) that saw /readyz
        // 200 just before still arrive for a moment: keep serving them.
        let grace = started + DRAIN_GRACE.min(timeout);
        tracing::info!(
            open_streams = self.dialer.open_streams(),
            ?timeout,
            "draining: /readyz is 503, agents told; waiting for open streams"
        );
        loop {
            let open = self.dialer.open_streams();
            if open == 0 && tokio::time::Instant::now() >= grace {
                tracing::info!("drained: no open streams");
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    open_streams = open,
                    "--drain-timeout reached; closing the rest"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        self.shutdown().await;
    }

    /// Closes agent connections (they reconnect to the next server at once)
    /// and stops all listeners.
    pub async fn shutdown(mut self) {
        self.endpoint.close(
            quinn::VarInt::from_u32(proto::codes::CONN_SHUTDOWN),
            b"server shutting down",
        );
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.endpoint.wait_idle())
            .await;
        self.tasks.shutdown().await;
        // No node is reachable through this server any more.
        if let Some(hosts) = &self.hosts_file {
            hosts.clear();
        }
    }
}

/// Binds every listener and starts serving.
pub async fn start(cfg: ServerConfig) -> anyhow::Result<RunningServer> {
    let metrics = ServerMetrics::new()
        .context("registering metrics")?
        .with_per_node(cfg.per_node_metrics, cfg.per_node_metrics_max_nodes);
    let server_id = cfg.replicas.server_id.as_str();
    metrics
        .info
        .with_label_values(&[server_id, env!("CARGO_PKG_VERSION")])
        .set(1);
    let registry = Arc::new(AgentRegistry::with_server_id(server_id));
    // The key also seeds the QUIC stateless-reset secret (stable across restarts).
    let (_, key) = certs::load_cert_and_key(&cfg.tls_cert, &cfg.tls_key)?;
    let tls_files = TlsFiles {
        cert: cfg.tls_cert.clone(),
        key: cfg.tls_key.clone(),
        agent_ca: cfg.agent_ca.clone(),
    };
    let server_tls = ServerTls::load(&tls_files)?;
    let revocations = Arc::new(Revocations::new(match &cfg.revocation_file {
        Some(path) => crate::revocation::load(path)?,
        None => Default::default(),
    }));
    let mut tasks = JoinSet::new();
    crate::kube_controllers::start(&cfg.controllers, &metrics, &mut tasks).await?;

    // Shared by every listener, so a reloaded --tls-cert reaches all of them.
    let server_cert = server_tls.cert.clone();
    let agent_tls = certs::reloadable_server_config(
        server_tls.cert.clone(),
        Some(server_tls.agent_ca.clone()),
        vec![proto::ALPN_QUIC.to_vec()],
    )?;
    let tuning = QuicTuning {
        keep_alive: cfg.agent_keepalive,
        idle_timeout: cfg.agent_idle_timeout,
        congestion: cfg.congestion_control,
        // The server opens the dial streams; agents open their control
        // stream and their edge→cloud service streams.
        max_incoming_streams: crate::services::MAX_SERVICE_STREAMS as u32 + 16,
        ..QuicTuning::default()
    };
    let endpoint =
        transport::quic::server_endpoint(cfg.agent_addr, agent_tls, &tuning, key.secret_der())
            .with_context(|| format!("starting the agent listener on {} (UDP)", cfg.agent_addr))?;
    // Peers are checked against this replica's own certificate name (CN).
    let own_name = certs::load_cert_chain(&cfg.tls_cert)?
        .first()
        .and_then(|c| certs::common_name(c).ok().flatten());
    let me = crate::peers::decide::Replica {
        server_id: cfg.replicas.server_id.clone(),
        instance: crate::peers::decide::instance_number(),
    };
    let peers = cfg.replicas.peer_cert.as_ref().map(|(cert, key)| {
        Arc::new(crate::peers::Peers::new(
            me.clone(),
            &cfg.replicas.peers,
            cfg.agent_addr,
            crate::peers::PeerTls {
                cert: cert.clone(),
                key: key.clone(),
                ca: cfg.agent_ca.clone(),
                server_name: own_name.clone(),
            },
            metrics.clone(),
        ))
    });
    let mut dialer = Dialer::new(
        registry.clone(),
        metrics.clone(),
        cfg.dial_timeout,
        cfg.max_streams,
        cfg.max_pending_dials,
    )
    .with_max_streams_per_node(cfg.max_streams_per_node)
    .with_quotas(crate::dial::StreamQuotas {
        forward: cfg.hardening.max_streams_forward,
        http_proxy: cfg.hardening.max_streams_http_proxy,
        idle: cfg.hardening.stream_idle_timeout,
    });
    if let Some(peers) = &peers {
        peers.refresh().await;
        tasks.spawn(
            peers
                .clone()
                .run_refresh(cfg.replicas.peer_resolve_interval),
        );
        dialer = dialer.with_peers(peers.clone());
    }
    let dialer = Arc::new(dialer);
    // Signs enrolled (agent port, TCP) and renewed (service streams) agent certificates.
    let issuer = Arc::new(Issuer {
        ca: match &cfg.agent_ca_key {
            Some(k) => Some(certs::CertificateAuthority::from_files(&cfg.agent_ca, k)?),
            None => None,
        },
        tokens: cfg.token_dir.as_ref().map(certs::TokenStore::new),
        validity: cfg.agent_cert_ttl,
        revocations: revocations.clone(),
        metrics: metrics.clone(),
    });
    let (drain, draining_rx) = tokio::sync::watch::channel(false);
    let agents = Arc::new(AgentListener {
        draining: draining_rx,
        gate: crate::handshake_gate::HandshakeGate::new(cfg.hardening.max_pending_handshakes),
        registry: registry.clone(),
        metrics: metrics.clone(),
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        revocations: revocations.clone(),
        services: Arc::new(ServiceContext {
            apiserver: cfg.apiserver.clone(),
            dial_timeout: cfg.dial_timeout,
            dialer: dialer.clone(),
            metrics: metrics.clone(),
            issuer: issuer.clone(),
        }),
    });
    tasks.spawn(agents.clone().serve_quic(endpoint.clone()));
    tracing::info!(addr = %endpoint.local_addr()?, "accepting agents over QUIC");
    // The same port number on TCP, for agents whose UDP is blocked, and for enrollment.
    let port_tls = Arc::new(AgentPortTls {
        tunnel: Arc::new(certs::reloadable_server_config(
            server_tls.cert.clone(),
            Some(server_tls.agent_ca.clone()),
            vec![b"http/1.1".to_vec()],
        )?),
        enroll: Arc::new(certs::reloadable_server_config(
            server_tls.cert.clone(),
            None,
            vec![proto::enroll::ALPN_ENROLL.to_vec()],
        )?),
        peer: Arc::new(certs::reloadable_server_config(
            server_tls.cert.clone(),
            Some(server_tls.agent_ca.clone()),
            vec![crate::peers::ALPN_PEER.to_vec()],
        )?),
        peers: Arc::new(crate::peers::serve::PeerService {
            dialer: dialer.clone(),
            me,
        }),
        issuer: issuer.clone(),
        rate: Arc::new(crate::enroll::rate::EnrollRate::new(
            cfg.hardening.enroll_attempts_per_minute,
        )),
    });
    let reload_trigger = Arc::new(Notify::new());
    tasks.spawn(
        Reloader {
            files: tls_files,
            tls: server_tls,
            revocation_file: cfg.revocation_file.clone(),
            revocations: revocations.clone(),
            registry: registry.clone(),
            metrics: metrics.clone(),
            trigger: reload_trigger.clone(),
        }
        .run(),
    );
    let ws_listener = tokio::net::TcpListener::bind(endpoint.local_addr()?)
        .await
        .with_context(|| format!("starting the agent listener on {} (TCP)", cfg.agent_addr))?;
    tracing::info!(addr = %ws_listener.local_addr()?, path = transport::ws::TUNNEL_PATH,
        "accepting agents over WebSocket");
    tasks.spawn(agents.serve_ws(ws_listener, port_tls));

    let ctx = Arc::new(FrontendContext {
        dialer: dialer.clone(),
        header_timeout: cfg.header_timeout,
        max_connections: cfg.hardening.max_connections_per_listener,
        http_proxy_idle: cfg.hardening.http_proxy_idle_timeout,
    });
    if let Some(path) = &cfg.uds {
        let l = listeners::bind_uds(path)?;
        tracing::info!(path = %path.display(), "front end listening on Unix socket");
        tasks.spawn(listeners::serve_uds(l, ctx.clone()));
    }
    if let (Some(addr), Some(ca)) = (cfg.proxy_addr, &cfg.proxy_client_ca) {
        let client_ca = certs::load_root_store(ca)?;
        let mut tls = certs::proxy_server_config_reloadable(server_cert.clone(), client_ca)?;
        // Offer h2 so TLS gRPC clients can negotiate it; HTTP CONNECT clients
        // get http/1.1 (or no ALPN at all). The protocol is still decided by
        // sniffing the first bytes, whatever was negotiated.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --proxy-addr {addr}"))?;
        tracing::info!(%addr, "front end listening on TCP with mutual TLS");
        tasks.spawn(listeners::serve_tls(
            l,
            TlsAcceptor::from(Arc::new(tls)),
            Arc::new(listeners::ClientPolicy {
                allowed_names: cfg.proxy_client_names.clone(),
                revocations: revocations.clone(),
            }),
            ctx.clone(),
        ));
    }

    if let Some(addr) = cfg.http_proxy_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --http-proxy-addr {addr}"))?;
        tracing::info!(%addr, "plain-HTTP proxy listening");
        tasks.spawn(crate::frontend::http_proxy::serve(l, ctx.clone()));
    }
    start_passthrough(&cfg.passthrough, &ctx, &registry, &mut tasks).await?;
    let mut forwards = Forwards::new(dialer.clone(), cfg.hardening.max_connections_per_listener);
    if let Some(e) = forwards.apply(&cfg.forwards).await.into_iter().next() {
        return Err(e.into());
    }

    let ready = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    let admin = transport::admin::bind(cfg.admin_addr)
        .await
        .with_context(|| format!("binding --admin-addr {}", cfg.admin_addr))?;
    tracing::info!(addr = %admin.local_addr()?, "admin endpoints listening");
    tasks.spawn(transport::admin::serve(
        admin,
        crate::admin::handler(
            registry.clone(),
            metrics,
            ready.clone(),
            draining.clone(),
            Arc::new(cfg.sd_ports.clone()),
        ),
    ));
    ready.store(true, Ordering::Release);
    Ok(RunningServer {
        registry,
        dialer,
        drain,
        draining,
        endpoint,
        tasks,
        forwards,
        reload_trigger,
        hosts_file: cfg.passthrough.hosts_file.clone(),
    })
}

/// The front ends for clients that dial nodes directly: SNI passthrough,
/// its DNS hosts file, and the transparent (REDIRECT) listener.
async fn start_passthrough(
    cfg: &PassthroughConfig,
    ctx: &FrontendContext,
    registry: &Arc<AgentRegistry>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    if let Some(addr) = cfg.kubelet_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --kubelet-addr {addr}"))?;
        tracing::info!(%addr, kubelet_port = cfg.kubelet_port, node_domain = ?cfg.node_domain,
            "SNI passthrough listening");
        tasks.spawn(sni::serve(
            l,
            Arc::new(sni::SniFrontend {
                dialer: ctx.dialer.clone(),
                header_timeout: ctx.header_timeout,
                kubelet_port: cfg.kubelet_port,
                node_domain: cfg.node_domain.clone(),
            }),
        ));
    }
    if let Some(hosts) = &cfg.hosts_file {
        tracing::info!(path = %hosts.path.display(), address = %hosts.address,
            "writing connected nodes to the DNS hosts file");
        tasks.spawn(hosts.clone().run(registry.clone()));
    }
    if let Some(addr) = cfg.transparent_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --transparent-addr {addr}"))?;
        tracing::info!(%addr, "transparent (REDIRECT) listener listening");
        tasks.spawn(transparent::serve(l, ctx.dialer.clone()));
    }
    Ok(())
}
