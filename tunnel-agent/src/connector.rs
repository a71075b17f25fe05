//! Keeping one registered connection to the server, forever.
//!
//! Each attempt resolves the server, dials QUIC, opens the control stream,
//! says hello and waits for the server's verdict. While registered, every
//! stream the server opens is served by the [`EdgeDialer`]. When the
//! connection ends, the agent waits per its [`Backoff`] and tries again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::{Hello, HelloAck, Message, RejectReason, PROTOCOL_VERSION};
use rustls::pki_types::ServerName;
use tokio::sync::watch;
use transport::framed::{read_message, read_message_timeout, write_message, FramedError};
use transport::quic::QuicTuning;
use transport::{TunnelConnection, TunnelRecv, TunnelSend};

use crate::backoff::Backoff;
use crate::edge::EdgeDialer;
use crate::metrics::AgentMetrics;

/// What a connection attempt needs.
pub struct Connector {
    pub server_host: String,
    pub server_port: u16,
    pub node_name: String,
    pub node_ips: Vec<std::net::IpAddr>,
    pub tls: rustls::ClientConfig,
    pub tuning: QuicTuning,
    pub connect_timeout: Duration,
    pub dialer: Arc<EdgeDialer>,
    pub metrics: AgentMetrics,
    /// True while registered (drives `/readyz`).
    pub connected: Arc<AtomicBool>,
}

/// Why one attempt did not produce a registered connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve server {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("invalid server name {0:?} for TLS")]
    ServerName(String),
    #[error("QUIC setup: {0}")]
    Setup(#[from] transport::quic::QuicSetupError),
    #[error("connecting to {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("no QUIC handshake with {addr} within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("handshake with the server failed: {0}")]
    Handshake(#[from] FramedError),
    #[error("server refused registration ({}): {message}", reason.as_str())]
    Rejected {
        reason: RejectReason,
        message: String,
    },
    #[error("server answered the hello with an unexpected message: {0}")]
    Unexpected(String),
}

/// A registered connection.
struct Session {
    endpoint: quinn::Endpoint,
    link: TunnelConnection,
    control: (TunnelSend, TunnelRecv),
}

impl Connector {
    /// Connects, serves and reconnects until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::default();
        let mut attempt = 0u64;
        loop {
            if attempt > 0 {
                self.metrics.reconnects.inc();
            }
            attempt += 1;
            let result = tokio::select! {
                r = self.connect_once() => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(session) => {
                    backoff.reset();
                    if self.serve(session, &mut shutdown).await {
                        return;
                    }
                }
                Err(e @ ConnectError::Rejected { .. }) => {
                    tracing::error!(node = %self.node_name, error = %e, "registration refused; will retry");
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

    async fn connect_once(&self) -> Result<Session, ConnectError> {
        let addr = self.resolve().await?;
        let server_name = ServerName::try_from(self.server_host.clone())
            .map_err(|_| ConnectError::ServerName(self.server_host.clone()))?;
        let endpoint = transport::quic::client_endpoint(addr, self.tls.clone(), &self.tuning)?;
        let connecting =
            endpoint
                .connect(addr, &server_name.to_str())
                .map_err(|e| ConnectError::Connect {
                    addr,
                    reason: e.to_string(),
                })?;
        let conn = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(ConnectError::Connect {
                    addr,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                return Err(ConnectError::Timeout {
                    addr,
                    after: self.connect_timeout,
                })
            }
        };
        let link = TunnelConnection::Quic(conn);
        let (mut send, mut recv) = link
            .open_stream()
            .await
            .map_err(|e| ConnectError::Handshake(e.into()))?;
        let hello = Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node_name: self.node_name.clone(),
            node_ips: self.node_ips.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            capabilities: Vec::new(),
        });
        write_message(&mut send, &hello).await?;
        match read_message_timeout(&mut recv, self.connect_timeout * 3).await? {
            Message::HelloAck(HelloAck::Accepted { server_version }) => {
                tracing::info!(node = %self.node_name, server = %addr, %server_version,
                    transport = link.kind().as_str(), "registered with the server");
                Ok(Session {
                    endpoint,
                    link,
                    control: (send, recv),
                })
            }
            Message::HelloAck(HelloAck::Rejected { reason, message }) => {
                Err(ConnectError::Rejected { reason, message })
            }
            other => Err(ConnectError::Unexpected(format!("{other:?}"))),
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, ConnectError> {
        let err = |reason: String| ConnectError::Resolve {
            host: self.server_host.clone(),
            reason,
        };
        let mut addrs = tokio::net::lookup_host((self.server_host.as_str(), self.server_port))
            .await
            .map_err(|e| err(e.to_string()))?;
        addrs.next().ok_or_else(|| err("no addresses".into()))
    }

    /// Serves streams until the connection ends; true if we are shutting down.
    async fn serve(&self, session: Session, shutdown: &mut watch::Receiver<bool>) -> bool {
        let Session {
            endpoint,
            link,
            control: (_control_send, mut control_recv),
        } = session;
        let transport = link.kind().as_str();
        self.metrics
            .connected
            .with_label_values(&[transport])
            .set(1);
        self.connected.store(true, Ordering::Release);
        let node: Arc<str> = Arc::from(self.node_name.as_str());

        let accept = async {
            loop {
                match link.accept_stream().await {
                    Ok((send, recv)) => {
                        tokio::spawn(self.dialer.clone().serve_stream(node.clone(), send, recv));
                    }
                    Err(e) => return e.to_string(),
                }
            }
        };
        let control = async { while read_message(&mut control_recv).await.is_ok() {} };
        let (reason, stopping) = tokio::select! {
            r = accept => (r, false),
            _ = control => ("server closed the control stream".to_string(), false),
            _ = shutdown.changed() => ("agent shutting down".to_string(), true),
        };
        self.metrics
            .connected
            .with_label_values(&[transport])
            .set(0);
        self.connected.store(false, Ordering::Release);
        tracing::warn!(node = %self.node_name, %reason, "disconnected from the server");
        link.close(proto::codes::CONN_SHUTDOWN, &reason);
        if stopping {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
        stopping
    }
}
