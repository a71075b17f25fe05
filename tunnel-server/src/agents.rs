//! The agent-facing listener: accepts QUIC connections, checks each agent's
//! hello against its certificate, registers it, and unregisters it when the
//! connection ends.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proto::{HelloAck, Message};
use transport::framed::{read_message, read_message_timeout, write_message};
use transport::TunnelConnection;

use crate::handshake::{check_hello, Rejection};
use crate::handshake_gate::{reconnect_spread, HandshakeGate, HandshakePermit};
use crate::metrics::ServerMetrics;
use crate::registry::{AgentEntry, AgentRegistry};
use crate::services::{serve_agent_streams, ServiceContext, ServicePeer};

/// How long an agent has, after connecting, to open its control stream and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of the agent listener.
pub struct AgentListener {
    /// `--max-pending-handshakes`: connections not yet registered.
    pub gate: HandshakeGate,
    pub registry: Arc<AgentRegistry>,
    pub metrics: ServerMetrics,
    pub server_version: String,
    /// Nodes whose certificates are refused (`--revocation-file`).
    pub revocations: Arc<crate::revocation::Revocations>,
    /// Edge→cloud services offered on registered connections.
    pub services: Arc<ServiceContext>,
    /// True once this replica drains (SIGTERM): agents are told it is
    /// leaving, new connections are closed before registering.
    pub draining: tokio::sync::watch::Receiver<bool>,
}

impl AgentListener {
    /// Accepts agents until the endpoint is closed.
    pub async fn serve_quic(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            if self.gate.under_pressure() && !incoming.remote_address_validated() {
                // Address validation first: spoofed sources never come back.
                if let Err(e) = incoming.retry() {
                    e.into_incoming().refuse();
                }
                continue;
            }
            let Some(permit) = self.gate.try_enter() else {
                // Before any crypto: the agent retries after its spread.
                self.refused_busy("quic");
                incoming.refuse();
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match tokio::time::timeout(HELLO_TIMEOUT, incoming).await {
                    Ok(Ok(conn)) => {
                        this.serve_connection(TunnelConnection::Quic(conn), permit)
                            .await
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "agent QUIC handshake failed")
                    }
                    Err(_) => tracing::info!(%remote, "agent QUIC handshake timed out"),
                }
            });
        }
    }

    /// Counts a connection refused because the handshake budget is spent.
    pub(crate) fn refused_busy(&self, transport: &str) {
        self.metrics
            .handshakes_refused
            .with_label_values(&[transport])
            .inc();
        tracing::debug!(
            transport,
            "agent connection refused: --max-pending-handshakes in progress"
        );
    }

    /// Runs one authenticated connection from hello to disconnect; `permit`
    /// (its handshake slot) is released once it is registered or refused.
    pub(crate) async fn serve_connection(&self, link: TunnelConnection, permit: HandshakePermit) {
        let remote = link.remote_address();
        if *self.draining.borrow() {
            tracing::info!(%remote, "agent connection closed: this replica is draining");
            link.close(proto::codes::CONN_SHUTDOWN, "server draining");
            return;
        }
        let identity = match peer_identity(&link) {
            Ok(id) => id,
            Err(reason) => {
                tracing::warn!(%remote, %reason, "refusing agent: bad certificate");
                self.reject_metric(proto::RejectReason::BadCertificate);
                link.close(proto::codes::CONN_REJECTED, &reason);
                return;
            }
        };
        let node = identity.node_name.clone();
        let (mut send, mut recv) = match tokio::time::timeout(HELLO_TIMEOUT, link.accept_stream())
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(%node, %remote, error = %e, "agent left before saying hello");
                return;
            }
            Err(_) => {
                tracing::warn!(%node, %remote, "agent opened no control stream in time; closing");
                link.close(proto::codes::CONN_PROTOCOL_ERROR, "no hello");
                return;
            }
        };
        let hello = match read_message_timeout(&mut recv, HELLO_TIMEOUT).await {
            Ok(Message::Hello(h)) => h,
            Ok(other) => {
                tracing::warn!(%node, %remote, message = ?other, "agent's first message is not a hello; closing");
                link.close(proto::codes::CONN_PROTOCOL_ERROR, "expected hello");
                return;
            }
            Err(e) => {
                tracing::warn!(%node, %remote, error = %e, "reading agent hello failed; closing");
                link.close(proto::codes::CONN_PROTOCOL_ERROR, "bad hello");
                return;
            }
        };
        if let Some(message) = self.revoked(&link) {
            tracing::warn!(%node, %remote, "refusing agent: {message}");
            self.metrics
                .agent_rejections
                .with_label_values(&["revoked"])
                .inc();
            let ack = Message::HelloAck(HelloAck::Rejected {
                reason: proto::RejectReason::BadCertificate,
                message: message.clone(),
            });
            if write_message(&mut send, &ack).await.is_ok() {
                send.finish_and_wait(Duration::from_secs(2)).await;
            }
            link.close(proto::codes::CONN_REJECTED, &message);
            return;
        }
        let reg = match check_hello(&hello, &identity) {
            Ok(r) => r,
            Err(Rejection { reason, message }) => {
                tracing::warn!(%node, %remote, reason = reason.as_str(), "refusing agent: {message}");
                self.reject_metric(reason);
                let ack = Message::HelloAck(HelloAck::Rejected {
                    reason,
                    message: message.clone(),
                });
                if write_message(&mut send, &ack).await.is_ok() {
                    send.finish_and_wait(Duration::from_secs(2)).await;
                }
                link.close(proto::codes::CONN_REJECTED, &message);
                return;
            }
        };
        let conn_id = self.registry.next_conn_id();
        let entry = Arc::new(AgentEntry {
            node: reg.node.clone(),
            ips: reg.ips.clone(),
            conn_id,
            agent_version: reg.agent_version.clone(),
            session: reg.session.clone(),
            connected_since: SystemTime::now(),
            streams: AtomicU64::new(0),
            link: link.clone(),
        });
        if let Some(old) = self.registry.register(entry) {
            retire(&self.registry, old, reg.session.as_deref(), link.kind());
        }
        let spread = reconnect_spread(self.registry.len());
        let ack = Message::HelloAck(HelloAck::Accepted {
            server_version: self.server_version.clone(),
            reconnect_spread_ms: u32::try_from(spread.as_millis()).unwrap_or(u32::MAX),
        });
        let written = write_message(&mut send, &ack).await;
        drop(permit);
        if let Err(e) = written {
            tracing::info!(%node, error = %e, "agent left during handshake");
            self.registry.unregister(&node, conn_id);
            return;
        }
        tracing::info!(%node, ips = ?reg.ips, %remote, transport = link.kind().as_str(),
            agent_version = %reg.agent_version, "agent registered");
        if let Some(not_after) = peer_leaf(&link).and_then(|c| certs::not_after_unix(&c).ok()) {
            self.metrics.set_agent_certificate_expiry(&node, not_after);
        }
        // Ends by itself when the connection does.
        tokio::spawn(serve_agent_streams(
            link.clone(),
            Arc::new(ServicePeer {
                identity,
                not_before: peer_leaf(&link).and_then(|c| certs::not_before_unix(&c).ok()),
            }),
            self.services.clone(),
        ));

        // The control stream stays open for future messages; unknown ones are skipped.
        let control = async {
            loop {
                match read_message(&mut recv).await {
                    Ok(Message::Unknown { kind }) => {
                        tracing::debug!(%node, kind, "ignoring unknown control message")
                    }
                    Ok(other) => {
                        tracing::debug!(%node, message = ?other, "ignoring unexpected control message")
                    }
                    Err(_) => return,
                }
            }
        };
        let mut draining = self.draining.clone();
        let tell_leaving = async {
            if draining.wait_for(|d| *d).await.is_ok()
                && write_message(&mut send, &Message::Leaving).await.is_ok()
            {
                tracing::info!(%node, "told the agent this replica is leaving");
            }
            std::future::pending::<()>().await
        };
        let reason = tokio::select! {
            r = link.closed() => r,
            // Never ends: after telling, it waits for the connection to close.
            _ = tell_leaving => "draining".to_string(),
            _ = control => {
                link.close(proto::codes::CONN_SHUTDOWN, "control stream closed");
                "control stream closed".to_string()
            }
        };
        if self.registry.unregister(&node, conn_id) {
            self.metrics.forget_node(&node);
            tracing::info!(%node, %remote, %reason, "agent disconnected");
        } else {
            tracing::info!(%node, %remote, %reason, "replaced agent connection closed");
        }
    }

    /// Why the deny list refuses this connection's certificate, if it does.
    fn revoked(&self, link: &TunnelConnection) -> Option<String> {
        let leaf = peer_leaf(link)?;
        let identity = certs::agent_identity(&leaf).ok()?;
        let not_before = certs::not_before_unix(&leaf).ok()?;
        let at = self
            .revocations
            .current()
            .revokes(&identity.node_name, not_before)?;
        Some(format!(
            "the certificate of node {:?} was revoked (at unix time {at}); enroll again with a new bootstrap token",
            identity.node_name
        ))
    }

    fn reject_metric(&self, reason: proto::RejectReason) {
        self.metrics
            .agent_rejections
            .with_label_values(&[reason.as_str()])
            .inc();
    }
}

/// The verified client certificate of `link`.
fn peer_leaf(link: &TunnelConnection) -> Option<rustls_pki_types::CertificateDer<'static>> {
    link.peer_certificates()?.into_iter().next()
}

/// The node identity in the verified client certificate of `link`.
fn peer_identity(link: &TunnelConnection) -> Result<certs::NodeIdentity, String> {
    let chain = link
        .peer_certificates()
        .ok_or_else(|| "no client certificate".to_string())?;
    let leaf = chain
        .first()
        .ok_or_else(|| "empty client certificate chain".to_string())?;
    certs::agent_identity(leaf).map_err(|e| e.to_string())
}

/// Longest time a connection replaced by its own agent's new transport may
/// keep carrying its open streams.
const DRAIN_LIMIT: Duration = Duration::from_secs(3600);

/// Ends a connection that a newer one of the same node replaced. If the same
/// agent process moved transports (same session), its open streams finish
/// first; a different process (a duplicate agent) is cut off at once.
fn retire(
    registry: &Arc<AgentRegistry>,
    old: Arc<AgentEntry>,
    new_session: Option<&str>,
    new_transport: transport::TransportKind,
) {
    let node = old.node.clone();
    let same_agent = old.session.is_some() && old.session.as_deref() == new_session;
    if !same_agent {
        tracing::info!(%node, old_remote = %old.link.remote_address(), "replacing previous connection of this node");
        old.link.close(
            proto::codes::CONN_REPLACED,
            "replaced by a newer connection",
        );
        return;
    }
    tracing::info!(%node, from = old.transport().as_str(), to = new_transport.as_str(),
        open_streams = old.streams.load(std::sync::atomic::Ordering::Relaxed),
        "agent changed transport; draining the previous connection");
    // Revocation must still find it while it drains (crate::reload).
    registry.start_draining(old.clone());
    let registry = registry.clone();
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        while old.streams.load(std::sync::atomic::Ordering::Relaxed) > 0
            && started.elapsed() < DRAIN_LIMIT
        {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = old.link.closed() => {
                    registry.finish_draining(old.conn_id);
                    return;
                }
            }
        }
        tracing::info!(%node, "previous connection drained; closing it");
        old.link
            .close(proto::codes::CONN_REPLACED, "moved to a newer connection");
        registry.finish_draining(old.conn_id);
    });
}
