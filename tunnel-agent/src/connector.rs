//! Keeping one registered connection to the server, forever.
//!
//! Each attempt dials the preferred transport (QUIC; with `--transport auto`
//! WebSocket over TLS when QUIC does not complete), opens the control stream,
//! says hello and waits for the server's verdict. While registered, every
//! stream the server opens is served by the [`EdgeDialer`]. On WebSocket in
//! `auto` mode, QUIC is probed in the background; when it works the agent
//! registers over QUIC (new streams go there) and lets the WebSocket
//! connection finish its open streams. When the connection ends, the agent
//! waits per its [`Backoff`] and tries again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::{Hello, HelloAck, Message, RejectReason, PROTOCOL_VERSION};
use rustls::pki_types::ServerName;
use tokio::sync::watch;
use transport::framed::{read_message, read_message_timeout, write_message, FramedError};
use transport::mux::{MuxRole, PeerInfo};
use transport::quic::QuicTuning;
use transport::{TransportKind, TunnelConnection, TunnelRecv, TunnelSend};

use crate::backoff::{spread_from_hint, Backoff, DEFAULT_RECONNECT_SPREAD};
use crate::config::TransportChoice;
use crate::edge::EdgeDialer;
use crate::link::LinkPublisher;
use crate::metrics::AgentMetrics;
use crate::proxy::{HttpProxy, ProxyError};
use crate::tls_files::AgentTlsFiles;

/// What a connection attempt needs: one per server address
/// ([`crate::servers`] starts and stops them).
pub struct Connector {
    /// The `--server` HOST: TLS server name and WebSocket `Host`, whatever address is dialed.
    pub server_host: String,
    pub server_port: u16,
    /// The address to dial; `None`: resolve `server_host` (behind a proxy, the proxy does).
    pub server_addr: Option<SocketAddr>,
    /// `server` label of this connection's metrics.
    pub server_key: String,
    pub node_name: String,
    pub node_ips: Vec<std::net::IpAddr>,
    pub transport: TransportChoice,
    /// Certificate files, read again for every attempt (renewals, repaired files).
    pub tls: AgentTlsFiles,
    pub proxy: Option<HttpProxy>,
    pub tuning: QuicTuning,
    pub connect_timeout: Duration,
    pub quic_probe_interval: Duration,
    pub dialer: Arc<EdgeDialer>,
    pub metrics: AgentMetrics,
    /// Server connections registered now, over all connectors (drives `/readyz`).
    pub connected: Arc<AtomicUsize>,
    /// Whether this connector counts in `connected`.
    pub up: AtomicBool,
    /// Random per process; lets the server tell a transport switch of this
    /// agent from a second agent claiming the same node.
    pub session: String,
    /// Where the current connection is published for edge→cloud service streams.
    pub link: LinkPublisher,
}

/// Why one attempt did not produce a registered connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve server {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("invalid server name {0:?} for TLS")]
    ServerName(String),
    #[error(transparent)]
    Certificate(#[from] certs::CertError),
    #[error("QUIC setup: {0}")]
    Setup(#[from] transport::quic::QuicSetupError),
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no {what} with {addr} within {after:?}")]
    Timeout {
        what: &'static str,
        addr: String,
        after: Duration,
    },
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("handshake with the server failed: {0}")]
    Handshake(#[from] FramedError),
    #[error("server refused registration ({}): {message}", reason.as_str())]
    Rejected {
        reason: RejectReason,
        message: String,
    },
    #[error("server answered the hello with an unexpected message: {0}")]
    Unexpected(String),
    #[error(
        "server {addr} is busy admitting other agents (connection refused before the handshake)"
    )]
    Busy { addr: String },
}

/// A registered connection.
struct Session {
    endpoint: Option<quinn::Endpoint>,
    link: TunnelConnection,
    control: (TunnelSend, TunnelRecv),
    /// The server's hint: how long to spread a reconnect it refuses as busy.
    reconnect_spread: Duration,
}

/// How serving a session ended.
enum ServeEnd {
    /// The connection is gone; back off and reconnect.
    Lost,
    /// Shutting down.
    Stopping,
    /// A better transport registered; serve it next.
    Upgraded(Box<Session>),
}

impl Connector {
    /// Connects, serves and reconnects until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        let mut attempt = 0u64;
        // Until a server says otherwise (it does in every HelloAck).
        let mut spread = DEFAULT_RECONNECT_SPREAD;
        loop {
            if attempt > 0 {
                self.metrics.reconnects.inc();
            }
            attempt += 1;
            let result = tokio::select! {
                r = self.connect_preferred() => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(mut session) => {
                    backoff.reset();
                    spread = session.reconnect_spread;
                    loop {
                        match self.serve(session, &mut shutdown).await {
                            ServeEnd::Stopping => return,
                            ServeEnd::Lost => break,
                            ServeEnd::Upgraded(next) => {
                                spread = next.reconnect_spread;
                                session = *next;
                            }
                        }
                    }
                }
                Err(e @ ConnectError::Rejected { .. }) => {
                    tracing::error!(node = %self.node_name, error = %e, "registration refused; will retry");
                }
                Err(e @ ConnectError::Busy { .. }) => {
                    let delay = backoff.next_busy_delay(rand::random(), rand::random(), spread);
                    tracing::info!(node = %self.node_name, error = %e, delay_ms = delay.as_millis() as u64,
                        spread_ms = spread.as_millis() as u64, "server busy; retrying later");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return,
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(node = %self.node_name, error = %e, "cannot reach the server");
                }
            }
            let delay = backoff.next_delay(rand::random::<f64>());
            tracing::info!(node = %self.node_name, delay_ms = delay.as_millis() as u64, "reconnecting after backoff");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// One attempt over the configured transport(s).
    async fn connect_preferred(&self) -> Result<Session, ConnectError> {
        match self.transport {
            TransportChoice::Quic => self.connect(TransportKind::Quic).await,
            TransportChoice::Websocket => self.connect(TransportKind::Websocket).await,
            TransportChoice::Auto => match self.connect(TransportKind::Quic).await {
                Ok(s) => Ok(s),
                // The server answered: UDP works, so WebSocket would only add load.
                Err(e @ (ConnectError::Rejected { .. } | ConnectError::Busy { .. })) => Err(e),
                Err(e) => {
                    tracing::warn!(node = %self.node_name, error = %e, "QUIC failed; trying WebSocket");
                    self.connect(TransportKind::Websocket).await
                }
            },
        }
    }

    async fn connect(&self, kind: TransportKind) -> Result<Session, ConnectError> {
        let (link, endpoint) = match kind {
            TransportKind::Quic => {
                let (link, ep) = self.dial_quic().await?;
                (link, Some(ep))
            }
            TransportKind::Websocket => (self.dial_ws().await?, None),
        };
        let (control, reconnect_spread) = self.hello(&link).await?;
        Ok(Session {
            endpoint,
            link,
            control,
            reconnect_spread,
        })
    }

    async fn dial_quic(&self) -> Result<(TunnelConnection, quinn::Endpoint), ConnectError> {
        let addr = self.resolve().await?;
        let tls = self.tls.client_config(proto::ALPN_QUIC)?;
        let endpoint = transport::quic::client_endpoint(addr, tls, &self.tuning)?;
        let connecting =
            endpoint
                .connect(addr, &self.server_host)
                .map_err(|e| ConnectError::Connect {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?;
        let conn = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Err(e)) if transport::quic::refused_as_busy(&e) => {
                return Err(ConnectError::Busy {
                    addr: addr.to_string(),
                })
            }
            other => step_result(
                "QUIC handshake",
                &addr.to_string(),
                self.connect_timeout,
                other,
            )?,
        };
        Ok((TunnelConnection::Quic(conn), endpoint))
    }

    async fn dial_ws(&self) -> Result<TunnelConnection, ConnectError> {
        let t = self.connect_timeout;
        let ws_tls = self.tls.client_config(b"http/1.1")?;
        let (tcp, remote) = match &self.proxy {
            Some(p) => {
                let (host, port) = match self.server_addr {
                    Some(a) => (a.ip().to_string(), a.port()),
                    None => (self.server_host.clone(), self.server_port),
                };
                let tcp = p.connect(&host, port, t).await?;
                let remote = tcp.peer_addr().map_err(|e| ConnectError::Connect {
                    addr: format!("{}:{}", p.host, p.port),
                    reason: e.to_string(),
                })?;
                (tcp, remote)
            }
            None => {
                let addr = self.resolve().await?;
                let connect = tokio::net::TcpStream::connect(addr);
                let tcp = step("TCP connection", &addr.to_string(), t, connect).await?;
                (tcp, addr)
            }
        };
        let _ = tcp.set_nodelay(true);
        transport::socket::set_tcp_keepalive(&tcp);
        let name = ServerName::try_from(self.server_host.clone())
            .map_err(|_| ConnectError::ServerName(self.server_host.clone()))?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(ws_tls));
        let addr = remote.to_string();
        let tcp = transport::tunnel_tcp::TunnelTcp::new(tcp);
        let mut tls = step("TLS handshake", &addr, t, connector.connect(name, tcp)).await?;
        let (tcp, session) = tls.get_mut();
        transport::ws::keep_send_queue_short(tcp, session);
        let host = if self.server_host.contains(':') {
            format!("[{}]", self.server_host)
        } else {
            self.server_host.clone()
        };
        let url = format!(
            "wss://{host}:{}{}",
            self.server_port,
            transport::ws::TUNNEL_PATH
        );
        let upgrade =
            tokio_tungstenite::client_async_with_config(url, tls, Some(transport::ws::ws_config()));
        let (ws, _) = step("WebSocket upgrade", &addr, t, upgrade).await?;
        let mux = transport::mux::spawn(
            transport::ws::WsByteStream::new(ws),
            MuxRole::Client,
            transport::mux::Frames::Edge,
        );
        Ok(TunnelConnection::Ws {
            mux,
            peer: PeerInfo {
                remote,
                certificates: None,
            },
        })
    }

    /// Opens the control stream and registers.
    /// Returns the control stream and the server's reconnect spread hint.
    async fn hello(
        &self,
        link: &TunnelConnection,
    ) -> Result<((TunnelSend, TunnelRecv), Duration), ConnectError> {
        let (mut send, mut recv) = link
            .open_stream()
            .await
            .map_err(|e| ConnectError::Handshake(e.into()))?;
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_name: self.node_name.clone(),
            node_ips: self.node_ips.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities: vec![format!("session={}", self.session)],
        });
        write_message(&mut send, &hello).await?;
        match read_message_timeout(&mut recv, self.connect_timeout * 3).await? {
            Message::HelloAck(HelloAck::Accepted {
                server_version,
                reconnect_spread_ms,
            }) => {
                tracing::info!(node = %self.node_name, server = %link.remote_address(), %server_version,
                    transport = link.kind().as_str(), "registered with the server");
                Ok(((send, recv), spread_from_hint(reconnect_spread_ms)))
            }
            Message::HelloAck(HelloAck::Rejected { reason, message }) => {
                Err(ConnectError::Rejected { reason, message })
            }
            other => Err(ConnectError::Unexpected(format!("{other:?}"))),
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, ConnectError> {
        if let Some(addr) = self.server_addr {
            return Ok(addr);
        }
        let err = |reason: String| ConnectError::Resolve {
            host: self.server_host.clone(),
            reason,
        };
        let mut addrs = tokio::net::lookup_host((self.server_host.as_str(), self.server_port))
            .await
            .map_err(|e| err(e.to_string()))?;
        addrs.next().ok_or_else(|| err("no addresses".into()))
    }

    /// Serves one session until it ends, we stop, or a QUIC probe succeeds.
    async fn serve(&self, session: Session, shutdown: &mut watch::Receiver<bool>) -> ServeEnd {
        let Session {
            endpoint,
            link,
            control: (control_send, mut control_recv),
            reconnect_spread: _,
        } = session;
        let transport = link.kind();
        self.set_connected(transport, true);
        self.link.publish(&link);
        let node: Arc<str> = Arc::from(self.node_name.as_str());
        let probing =
            self.transport == TransportChoice::Auto && transport == TransportKind::Websocket;

        let accept = accept_streams(link.clone(), self.dialer.clone(), node.clone());
        // The server's control messages; `Leaving`: it drains (SIGTERM), so
        // no new edge→cloud streams go here; its streams still arrive until
        // it closes the connection, then the usual backoff redials it.
        let control = async {
            loop {
                match read_message(&mut control_recv).await {
                    Ok(Message::Leaving) => {
                        tracing::info!(node = %self.node_name, server = %self.server_key,
                            "server is leaving; using the other servers for new streams");
                        self.link.withdraw();
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        };
        let probe = async {
            if !probing {
                return std::future::pending().await;
            }
            loop {
                let jitter = 0.8 + 0.4 * rand::random::<f64>();
                tokio::time::sleep(self.quic_probe_interval.mul_f64(jitter)).await;
                match self.connect(TransportKind::Quic).await {
                    Ok(s) => return s,
                    Err(e) => {
                        tracing::debug!(node = %self.node_name, error = %e, "QUIC probe failed")
                    }
                }
            }
        };
        let (reason, end) = tokio::select! {
            r = accept => (r, ServeEnd::Lost),
            _ = control => ("server closed the control stream".to_string(), ServeEnd::Lost),
            _ = shutdown.changed() => ("agent shutting down".to_string(), ServeEnd::Stopping),
            next = probe => {
                tracing::info!(node = %self.node_name, from = transport.as_str(), to = "quic",
                    "transport changed; open streams finish on the old connection");
                self.set_connected(transport, false);
                // Keep serving (and holding the control stream of) the old
                // connection until the server closes it once drained.
                let old = link.clone();
                let dialer = self.dialer.clone();
                tokio::spawn(async move {
                    let _control = (control_send, control_recv);
                    let why = accept_streams(old, dialer, node).await;
                    tracing::info!(%why, "previous connection closed");
                });
                return ServeEnd::Upgraded(Box::new(next));
            }
        };
        self.set_connected(transport, false);
        self.link.withdraw();
        tracing::warn!(node = %self.node_name, %reason, transport = transport.as_str(), "disconnected from the server");
        link.close(proto::codes::CONN_SHUTDOWN, &reason);
        if let (ServeEnd::Stopping, Some(ep)) = (&end, &endpoint) {
            let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
        }
        end
    }

    fn set_connected(&self, transport: TransportKind, up: bool) {
        self.metrics
            .connected
            .with_label_values(&[transport.as_str(), self.server_key.as_str()])
            .set(i64::from(up));
        if self.up.swap(up, Ordering::AcqRel) != up {
            if up {
                self.connected.fetch_add(1, Ordering::AcqRel);
            } else {
                self.connected.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// Runs one step of reaching the server with a deadline; both ways of
/// failing name the step and the address.
async fn step<T, E: std::fmt::Display>(
    what: &'static str,
    addr: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, ConnectError> {
    step_result(what, addr, limit, tokio::time::timeout(limit, fut).await)
}

/// [`step`]'s verdict on a finished (or timed out) step.
fn step_result<T, E: std::fmt::Display>(
    what: &'static str,
    addr: &str,
    limit: Duration,
    result: Result<Result<T, E>, tokio::time::error::Elapsed>,
) -> Result<T, ConnectError> {
    match result {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ConnectError::Connect {
            addr: addr.to_string(),
            reason: format!("{what}: {e}"),
        }),
        Err(_) => Err(ConnectError::Timeout {
            what,
            addr: addr.to_string(),
            after: limit,
        }),
    }
}

/// Serves every stream the server opens on `link`; returns why it stopped.
async fn accept_streams(link: TunnelConnection, dialer: Arc<EdgeDialer>, node: Arc<str>) -> String {
    loop {
        match link.accept_stream().await {
            Ok((send, recv)) => {
                tokio::spawn(dialer.clone().serve_stream(node.clone(), send, recv));
            }
            Err(e) => return e.to_string(),
        }
    }
}
