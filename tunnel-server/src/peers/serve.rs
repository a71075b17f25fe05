//! The answering side of the peer path: requests from other replicas,
//! served from this replica's own agents only (a request never hops on).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use proto::DialTarget;
use transport::mux::{MuxRole, PeerInfo};
use transport::tunnel_io::TunnelIo;
use transport::tunnel_tcp::TunnelTcp;
use transport::{TunnelConnection, TunnelRecv, TunnelSend};

use super::decide;
use super::wire::{self, Answer, Op, Request};
use crate::dial::{DialFailure, Dialer, Frontend};

/// How long a peer has to send its request on a new stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What answering peers needs.
pub struct PeerService {
    pub dialer: Arc<Dialer>,
    /// Who answers (the same as this replica's [`super::Peers`]).
    pub me: decide::Replica,
}

/// Serves one peer connection (TLS done, ALPN [`super::ALPN_PEER`]) until it closes.
/// Only a peer certificate of the agent CA may ask; anything else,
/// agent certificates included, is closed at once.
pub async fn serve(
    tls: tokio_rustls::server::TlsStream<TunnelTcp>,
    remote: SocketAddr,
    service: Arc<PeerService>,
) {
    let certificates = tls.get_ref().1.peer_certificates().map(<[_]>::to_vec);
    let allowed = certificates
        .as_ref()
        .and_then(|c| c.first())
        .is_some_and(|leaf| certs::is_peer_certificate(leaf).unwrap_or(false));
    if !allowed {
        tracing::warn!(%remote, "peer connection refused: the client certificate is not a peer certificate");
        service
            .dialer
            .metrics()
            .frontend_refusals
            .with_label_values(&["not_peer_certificate"])
            .inc();
        return;
    }
    let conn = TunnelConnection::Ws {
        mux: transport::mux::spawn(tls, MuxRole::Server, transport::mux::Frames::Peer),
        peer: PeerInfo {
            remote,
            certificates,
        },
    };
    tracing::info!(%remote, "peer replica connected");
    loop {
        match conn.accept_stream().await {
            Ok((send, recv)) => {
                tokio::spawn(handle(service.clone(), send, recv));
            }
            Err(e) => {
                tracing::info!(%remote, reason = %e, "peer replica connection closed");
                return;
            }
        }
    }
}

/// One request: a lookup (answer and done) or a dial (answer, then carry the bytes).
async fn handle(service: Arc<PeerService>, mut send: TunnelSend, mut recv: TunnelRecv) {
    let request: Request = match tokio::time::timeout(REQUEST_TIMEOUT, wire::read(&mut recv)).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "unreadable peer request");
            return;
        }
        Err(_) => return,
    };
    let target: DialTarget = match request.target.parse() {
        Ok(t) => t,
        Err(e) => {
            let answer = Answer {
                server_id: service.me.server_id.clone(),
                instance: service.me.instance,
                status: 400,
                label: "bad_request".into(),
                message: format!("invalid destination {:?}: {e}", request.target),
            };
            let _ = wire::write(&mut send, &answer).await;
            return;
        }
    };
    let node = request.node.as_deref();
    match request.op {
        Op::Lookup => {
            let found = service.dialer.has_local_route(node, &target);
            let missing = DialFailure::NoAgent {
                host: node.map_or_else(|| target.host_string(), str::to_owned),
            };
            let result = if found { Ok(()) } else { Err(&missing) };
            let _ = wire::write(&mut send, &decide::answer_for(&service.me, result)).await;
        }
        Op::Dial => {
            let dialed = service
                .dialer
                .dial_local(node, &target, Frontend::Peer)
                .await;
            let answer = decide::answer_for(&service.me, dialed.as_ref().map(|_| ()));
            if wire::write(&mut send, &answer).await.is_err() {
                return;
            }
            let Ok(edge) = dialed else { return };
            tracing::debug!(node = %edge.node, stream_id = edge.stream_id, %target,
                asked_by = %request.frontend, "carrying a stream for a peer replica");
            let mut io = TunnelIo::new(send, recv);
            service
                .dialer
                .splice(&mut io, edge.send, edge.recv, &edge.node, Frontend::Peer)
                .await;
        }
    }
}
