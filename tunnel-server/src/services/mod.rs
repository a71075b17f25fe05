//! Streams agents open towards the cloud (edge→cloud), the reverse of dials.
//!
//! After registering, an agent may open further streams on its connection.
//! Each starts with a [`Message::Service`] frame naming what it wants; the
//! server answers with a [`DialResult`] and hands the stream to that service:
//! a byte pipe to `--apiserver` for the agent's node proxy ([`apiserver`]),
//! or certificate renewal. Streams are bounded per connection.

pub mod apiserver;
pub mod renew;

use std::sync::Arc;
use std::time::Duration;

use proto::{AgentService, DialErrorKind, DialResult, DialTarget, Message};
use tokio::sync::Semaphore;
use tracing::Instrument;
use transport::framed::{read_message_timeout, write_message};
use transport::{TunnelConnection, TunnelRecv, TunnelSend};

use crate::dial::Dialer;
use crate::metrics::ServerMetrics;

/// Most service streams one agent connection may have open at once; more are reset.
pub const MAX_SERVICE_STREAMS: usize = 256;
/// How long an agent has to name the service after opening a stream.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the services need, shared by every agent connection.
pub struct ServiceContext {
    /// Where `AgentService::Apiserver` streams go (`--apiserver`), if anywhere.
    pub apiserver: Option<DialTarget>,
    /// Limit for connecting to a cloud-side service.
    pub dial_timeout: Duration,
    /// For byte counters shared with the front ends.
    pub dialer: Arc<Dialer>,
    pub metrics: ServerMetrics,
    /// Signs `AgentService::RenewCertificate` requests.
    pub issuer: Arc<crate::enroll::Issuer>,
}

/// The registered agent a service stream came from (from its certificate).
#[derive(Debug, Clone)]
pub struct ServicePeer {
    pub identity: certs::NodeIdentity,
    /// `notBefore` (Unix seconds) of the connection's certificate, for revocation checks.
    pub not_before: Option<i64>,
}

/// Serves every stream the agent opens on `link` after its control stream,
/// until the connection ends.
pub async fn serve_agent_streams(
    link: TunnelConnection,
    peer: Arc<ServicePeer>,
    ctx: Arc<ServiceContext>,
) {
    let limit = Arc::new(Semaphore::new(MAX_SERVICE_STREAMS));
    while let Ok((mut send, recv)) = link.accept_stream().await {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(node = %peer.identity.node_name, limit = MAX_SERVICE_STREAMS,
                "agent is over its limit of service streams; resetting the new one");
            send.reset(proto::codes::STREAM_CANCELLED);
            continue;
        };
        let (peer, ctx) = (peer.clone(), ctx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            serve_stream(send, recv, &peer, &ctx).await;
        });
    }
}

async fn serve_stream(
    mut send: TunnelSend,
    mut recv: TunnelRecv,
    peer: &ServicePeer,
    ctx: &ServiceContext,
) {
    let node = &peer.identity.node_name;
    let service = match read_message_timeout(&mut recv, REQUEST_TIMEOUT).await {
        Ok(Message::Service(s)) => s,
        Ok(other) => {
            tracing::warn!(%node, message = ?other, "agent stream did not start with a service request; resetting");
            send.reset(proto::codes::STREAM_PROTOCOL_ERROR);
            return;
        }
        Err(e) => {
            tracing::info!(%node, error = %e, "agent stream ended before naming a service");
            send.reset(proto::codes::STREAM_PROTOCOL_ERROR);
            return;
        }
    };
    let span = tracing::info_span!("service", %node, service = service.as_str());
    match service {
        AgentService::Apiserver => {
            apiserver::serve(send, recv, peer, ctx)
                .instrument(span)
                .await
        }
        AgentService::RenewCertificate => {
            renew::serve(send, recv, peer, ctx).instrument(span).await
        }
        AgentService::Unknown(_) => {
            let message = format!("this server does not offer {}", service.as_str());
            refuse(send, ctx, service, DialErrorKind::Other, &message)
                .instrument(span)
                .await
        }
    }
}

/// Answers a service request with a failure naming the cause, then ends the stream.
pub(crate) async fn refuse(
    mut send: TunnelSend,
    ctx: &ServiceContext,
    service: AgentService,
    kind: DialErrorKind,
    message: &str,
) {
    tracing::info!(reason = kind.as_str(), %message, "refusing service stream");
    count(ctx, service, kind.as_str());
    let answer = Message::DialResult(DialResult::Failed {
        kind,
        message: message.to_string(),
    });
    if write_message(&mut send, &answer).await.is_ok() {
        send.finish_and_wait(Duration::from_secs(2)).await;
    }
}

/// Counts one service request by its result.
pub(crate) fn count(ctx: &ServiceContext, service: AgentService, result: &str) {
    ctx.metrics
        .service_streams_total
        .with_label_values(&[service.as_str(), result])
        .inc();
}
