//! `AgentService::RenewCertificate`: a new certificate over the agent's own connection.
//!
//! After the server accepts the stream ([`DialResult::Connected`]), the agent sends its CSR
//! (PEM) and finishes its half; the server answers with one more [`DialResult`]: `Connected`
//! followed by the certificate PEM, or `Failed` with the reason (`NotAllowed`: retrying
//! cannot help, e.g. revoked or a CSR for another identity; `Other`: try again later).
//! The identity comes from the connection's verified certificate, never from the CSR.

use std::time::Duration;

use bytes::BytesMut;
use proto::{AgentService, DialErrorKind, DialResult, Message};
use transport::framed::write_message;
use transport::{TunnelRecv, TunnelSend};

use super::{count, refuse, ServiceContext, ServicePeer};

const SERVICE: AgentService = AgentService::RenewCertificate;
/// How long the agent has to send its CSR.
const CSR_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the CSR, issues the certificate (or says why not) and ends the stream.
pub async fn serve(
    mut send: TunnelSend,
    mut recv: TunnelRecv,
    peer: &ServicePeer,
    ctx: &ServiceContext,
) {
    if ctx.issuer.ca.is_none() {
        let message = "this server cannot issue certificates (it runs without --agent-ca-key)";
        return refuse(send, ctx, SERVICE, DialErrorKind::NotAllowed, message).await;
    }
    if write_message(&mut send, &Message::DialResult(DialResult::Connected))
        .await
        .is_err()
    {
        return;
    }
    let csr = match tokio::time::timeout(CSR_TIMEOUT, read_bounded(&mut recv)).await {
        Ok(Ok(csr)) => csr,
        Ok(Err(refusal)) => return answer(send, ctx, Err(refusal)).await,
        Err(_) => {
            let reason = format!("no complete CSR within {CSR_TIMEOUT:?}");
            return answer(send, ctx, Err((DialErrorKind::Other, reason))).await;
        }
    };
    let not_before = peer.not_before.unwrap_or(i64::MIN);
    let result = ctx
        .issuer
        .renew(&peer.identity, not_before, &csr)
        .map_err(|e| {
            tracing::warn!(node = %peer.identity.node_name, error = %e, "certificate renewal refused");
            ctx.issuer
                .metrics
                .enrollments
                .with_label_values(&["renew", e.label()])
                .inc();
            let kind = if proto::enroll::is_permanent_failure(e.status()) {
                DialErrorKind::NotAllowed
            } else {
                DialErrorKind::Other
            };
            (kind, e.to_string())
        });
    if result.is_ok() {
        ctx.issuer
            .metrics
            .enrollments
            .with_label_values(&["renew", "issued"])
            .inc();
    }
    answer(send, ctx, result).await
}

/// Sends the verdict (and the certificate), then finishes the stream.
async fn answer(
    mut send: TunnelSend,
    ctx: &ServiceContext,
    result: Result<String, (DialErrorKind, String)>,
) {
    let (verdict, pem) = match result {
        Ok(pem) => (DialResult::Connected, Some(pem)),
        Err((kind, message)) => (DialResult::Failed { kind, message }, None),
    };
    count(
        ctx,
        SERVICE,
        match &verdict {
            DialResult::Connected => "issued",
            DialResult::Failed { kind, .. } => kind.as_str(),
        },
    );
    if write_message(&mut send, &Message::DialResult(verdict))
        .await
        .is_err()
    {
        return;
    }
    if let Some(pem) = pem {
        if send.write_all(pem.as_bytes()).await.is_err() {
            return;
        }
    }
    send.finish_and_wait(Duration::from_secs(2)).await;
}

/// Reads until the agent finishes its half, refusing more than the CSR limit.
async fn read_bounded(recv: &mut TunnelRecv) -> Result<String, (DialErrorKind, String)> {
    let refuse = |reason: String| (DialErrorKind::NotAllowed, reason);
    let mut buf = BytesMut::new();
    loop {
        match recv.read_chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > proto::enroll::MAX_BODY_LEN {
                    return Err(refuse(format!(
                        "CSR larger than {} bytes",
                        proto::enroll::MAX_BODY_LEN
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err((DialErrorKind::Other, format!("reading the CSR: {e}"))),
        }
    }
    String::from_utf8(buf.to_vec()).map_err(|_| refuse("the CSR is not PEM text".to_string()))
}
