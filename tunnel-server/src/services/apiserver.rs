//! `AgentService::Apiserver`: a byte pipe from an agent's node proxy to the
//! server's `--apiserver`.
//!
//! The server only moves bytes: the agent speaks TLS end to end with the
//! apiserver (with the node's client certificate), so the apiserver sees and
//! authorizes the node itself, exactly as without the tunnel.

use std::net::SocketAddr;

use proto::{AgentService, DialErrorKind, DialResult, DialTarget, Host, Message};
use tokio::net::TcpStream;
use transport::framed::write_message;
use transport::socket::{dial_error_kind, AbortOnDrop};
use transport::splice::{splice, SpliceEnd};
use transport::{TunnelRecv, TunnelSend};

use super::{count, refuse, ServiceContext, ServicePeer};

const SERVICE: AgentService = AgentService::Apiserver;

/// Connects to `--apiserver`, answers the agent, and splices until both ends close.
pub async fn serve(
    mut send: TunnelSend,
    recv: TunnelRecv,
    peer: &ServicePeer,
    ctx: &ServiceContext,
) {
    let Some(target) = &ctx.apiserver else {
        let message = "this server has no --apiserver; start it with --apiserver HOST:PORT \
                       to carry node-proxy traffic";
        return refuse(send, ctx, SERVICE, DialErrorKind::NotAllowed, message).await;
    };
    let mut tcp = match tokio::time::timeout(ctx.dial_timeout, connect(target)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            let message = format!("connecting to --apiserver {target}: {e}");
            return refuse(send, ctx, SERVICE, dial_error_kind(&e), &message).await;
        }
        Err(_) => {
            let message = format!(
                "connecting to --apiserver {target}: no answer within {:?}",
                ctx.dial_timeout
            );
            return refuse(send, ctx, SERVICE, DialErrorKind::Timeout, &message).await;
        }
    };
    let _ = tcp.set_nodelay(true);
    if let Err(e) = write_message(&mut send, &Message::DialResult(DialResult::Connected)).await {
        tracing::info!(error = %e, "agent left before the apiserver stream started");
        return;
    }
    count(ctx, SERVICE, "ok");
    let gauge = ctx
        .metrics
        .service_streams_active
        .with_label_values(&[SERVICE.as_str()]);
    gauge.inc();
    let node = &peer.identity.node_name;
    let outcome = splice(&mut tcp, send, recv, ctx.dialer.byte_counter(node)).await;
    gauge.dec();
    tracing::debug!(to_edge = outcome.to_tunnel, from_edge = outcome.from_tunnel,
        end = ?outcome.end, "apiserver stream closed");
    if matches!(outcome.end, SpliceEnd::TunnelReset | SpliceEnd::TunnelLost) {
        let _ = tcp.abort_on_drop();
    }
}

async fn connect(target: &DialTarget) -> std::io::Result<TcpStream> {
    match &target.host {
        Host::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, target.port)).await,
        Host::Name(name) => TcpStream::connect((name.as_str(), target.port)).await,
    }
}
