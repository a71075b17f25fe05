//! Renewing the agent certificate before it expires, without touching the tunnel.
//!
//! After 2/3 of the certificate's lifetime the agent generates a new key and sends a CSR on
//! a service stream of its current tunnel connection ([`AgentService::RenewCertificate`]);
//! the server issues the identity of that connection's certificate. The answer is written
//! atomically; the tunnel connection and its streams are not interrupted, and the new files
//! are used by the next connection attempt (see [`crate::tls_files`]). While disconnected,
//! the agent retries with backoff until a connection exists.

use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use proto::{AgentService, DialErrorKind, DialResult, Message};
use transport::framed::read_message;

use crate::backoff::Backoff;
use crate::enroll::RequestError;
use crate::link::{AgentLink, LinkError};
use crate::tls_files::AgentTlsFiles;

/// How long before expiry the agent starts warning in its log.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest single sleep, so files replaced by hand are noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);
/// Wait after the server refused a renewal for good (e.g. revoked) before asking again.
const AFTER_REFUSAL: Duration = Duration::from_secs(300);
/// Limit for one renewal exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);

/// When (Unix seconds) a certificate valid from `not_before` to `not_after` is renewed:
/// after 2/3 of its lifetime.
pub fn renewal_time(not_before: i64, not_after: i64) -> i64 {
    let life = not_after.saturating_sub(not_before).max(0);
    not_before.saturating_add(life * 2 / 3)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Renews forever (until the task is dropped).
pub async fn run(files: AgentTlsFiles, link: AgentLink) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let loaded = match files.load() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "renewal: cannot read the current certificate; retrying");
                tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
                continue;
            }
        };
        let now = unix_now();
        let node = loaded.identity.node_name.clone();
        if loaded.not_after.saturating_sub(now) < EXPIRY_WARNING.as_secs() as i64
            && last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600))
        {
            last_warning = Some(tokio::time::Instant::now());
            tracing::warn!(%node, not_after = loaded.not_after, cert = %files.cert.display(),
                "the agent certificate expires within 7 days");
        }
        let due = renewal_time(loaded.not_before, loaded.not_after);
        if now < due {
            let wait = Duration::from_secs((due - now) as u64).min(MAX_SLEEP);
            tokio::time::sleep(wait).await;
            continue;
        }
        match renew_once(&files, &link, loaded).await {
            Ok(not_after) => {
                backoff.reset();
                last_warning = None;
                tracing::info!(%node, not_after, "certificate renewed; the next connection uses it");
            }
            Err(e @ RequestError::Refused { .. }) => {
                tracing::error!(%node, error = %e, "CERTIFICATE RENEWAL REFUSED; asking again later");
                tokio::time::sleep(AFTER_REFUSAL).await;
            }
            Err(e) => {
                let d = backoff.next_delay(rand::random::<f64>());
                tracing::warn!(%node, error = %e, delay_ms = d.as_millis() as u64, "certificate renewal failed; retrying");
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// One renewal: new key and CSR for the same identity, over the current connection.
async fn renew_once(
    files: &AgentTlsFiles,
    link: &AgentLink,
    current: crate::tls_files::LoadedIdentity,
) -> Result<i64, RequestError> {
    let request = certs::agent_key_request(&current.identity)
        .map_err(|e| RequestError::Transient(e.to_string()))?;
    let stream = link
        .open_service(AgentService::RenewCertificate, EXCHANGE_TIMEOUT)
        .await
        .map_err(|e| match e {
            LinkError::Refused {
                kind: DialErrorKind::NotAllowed,
                message,
                ..
            } => RequestError::Refused { message },
            other => RequestError::Transient(other.to_string()),
        })?;
    let cert_pem = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, &request.csr_pem))
        .await
        .map_err(|_| {
            RequestError::Transient(format!("no certificate within {EXCHANGE_TIMEOUT:?}"))
        })??;
    crate::enroll::save(files, &request.key_pem, &cert_pem)
        .map_err(|e| RequestError::Transient(e.to_string()))?;
    Ok(certs::load::first_cert_not_after(&cert_pem).unwrap_or(0))
}

/// Sends the CSR, reads the verdict and the certificate (bounded).
async fn exchange(
    mut stream: crate::link::ServiceStream,
    csr_pem: &str,
) -> Result<String, RequestError> {
    let transient = |what: &str, e: &dyn std::fmt::Display| {
        RequestError::Transient(format!("certificate renewal: {what}: {e}"))
    };
    stream
        .send
        .write_all(csr_pem.as_bytes())
        .await
        .map_err(|e| transient("sending the CSR", &e))?;
    stream.send.finish().await;
    match read_message(&mut stream.recv)
        .await
        .map_err(|e| transient("reading the answer", &e))?
    {
        Message::DialResult(DialResult::Connected) => {}
        Message::DialResult(DialResult::Failed {
            kind: DialErrorKind::NotAllowed,
            message,
        }) => return Err(RequestError::Refused { message }),
        Message::DialResult(DialResult::Failed { message, .. }) => {
            return Err(RequestError::Transient(message))
        }
        other => return Err(transient("unexpected answer", &format!("{other:?}"))),
    }
    let mut pem = BytesMut::new();
    while let Some(chunk) = stream
        .recv
        .read_chunk()
        .await
        .map_err(|e| transient("reading the certificate", &e))?
    {
        if pem.len() + chunk.len() > proto::enroll::MAX_BODY_LEN {
            return Err(transient("the certificate", &"too large"));
        }
        pem.extend_from_slice(&chunk);
    }
    String::from_utf8(pem.to_vec()).map_err(|_| transient("the certificate", &"not PEM text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_after_two_thirds_of_the_lifetime() {
        assert_eq!(renewal_time(1_000, 1_030), 1_020);
        assert_eq!(renewal_time(0, 365 * 86_400), 243 * 86_400 + 8 * 3600);
        // A certificate that ends before it starts is due at once.
        assert_eq!(renewal_time(1_000, 900), 1_000);
    }
}
