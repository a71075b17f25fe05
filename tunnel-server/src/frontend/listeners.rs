//! Accept loops for the front end: Unix socket and TCP with mutual TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
#[cfg(test)]
use std::time::Duration;
use transport::http_server::accept_backoff;

use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use super::conn_cap::ConnCap;
use super::{answer_and_linger, reply, serve_connection, FrontendContext};
use crate::revocation::{DenyList, Revocations};

/// Why a front-end listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("replacing stale socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("binding {what}: {source}")]
    Bind {
        what: String,
        source: std::io::Error,
    },
}

/// Binds the Unix socket with mode 0600, replacing a stale socket file.
pub fn bind_uds(path: &Path) -> Result<UnixListener, ListenError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ListenError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(|source| ListenError::RemoveStale {
            path: path.to_path_buf(),
            source,
        })?;
    }
    let bind_err = |source| ListenError::Bind {
        what: path.display().to_string(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves CONNECT on a Unix socket (access is controlled by the file mode).
/// Beyond `--max-connections-per-listener` a connection is answered 503.
pub async fn serve_uds(listener: UnixListener, ctx: Arc<FrontendContext>) {
    let cap = Arc::new(ConnCap::new(
        ctx.max_connections,
        "uds",
        ctx.dialer.metrics(),
    ));
    loop {
        match listener.accept().await {
            Ok((mut sock, _)) => {
                // Admitted in accept order, before any task runs.
                let slot = cap.admit(&"unix socket client");
                let ctx = ctx.clone();
                let cap = cap.clone();
                tokio::spawn(async move {
                    let Some(_slot) = slot else {
                        let answer = reply::error_response(503, &cap.message());
                        answer_and_linger(&mut sock, &answer).await;
                        return;
                    };
                    serve_connection(sock, ctx, None).await;
                });
            }
            Err(e) => accept_backoff("uds", &e).await,
        }
    }
}

/// Who may use `--proxy-addr` once TLS has verified the chain against
/// `--proxy-client-ca`.
pub struct ClientPolicy {
    /// `--proxy-client-name` (empty: any CN).
    pub allowed_names: Vec<String>,
    /// The deny list: a revoked CN (or node) is refused here too.
    pub revocations: Arc<Revocations>,
}

/// Serves CONNECT on TCP with TLS; clients must show a certificate signed by
/// the proxy client CA that [`ClientPolicy`] accepts.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    policy: Arc<ClientPolicy>,
    ctx: Arc<FrontendContext>,
) {
    let cap = Arc::new(ConnCap::new(
        ctx.max_connections,
        "proxy-addr",
        ctx.dialer.metrics(),
    ));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                accept_backoff("proxy-addr", &e).await;
                continue;
            }
        };
        // At the cap the connection is closed before any TLS work: a 503
        // would need the handshake the cap is there to spare.
        let Some(slot) = cap.admit(&peer) else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let policy = policy.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(ctx.header_timeout, acceptor.accept(sock)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "TLS handshake on --proxy-addr failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake on --proxy-addr timed out");
                    return;
                }
            };
            let forbidden = client_refusal(
                tls.get_ref().1.peer_certificates(),
                &policy.allowed_names,
                &policy.revocations.current(),
            );
            if let Some(reason) = &forbidden {
                ctx.dialer
                    .metrics()
                    .frontend_refusals
                    .with_label_values(&[refusal_label(reason)])
                    .inc();
                tracing::warn!(%peer, %reason, "refusing front-end client");
            }
            serve_connection(tls, ctx, forbidden).await;
        });
    }
}

/// Why a TLS client may not use the front end, or `None` if it may.
///
/// In order: a certificate is required; an agent certificate (`O=system:nodes`
/// or CN `system:node:*`) is never a front-end credential, whichever CA signed
/// it; a revoked identity (the node of an agent certificate, else the CN) is
/// refused; then `--proxy-client-name`, when set, must list the CN.
pub fn client_refusal(
    chain: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    allowed_names: &[String],
    deny: &DenyList,
) -> Option<String> {
    let Some(leaf) = chain.and_then(|c| c.first()) else {
        return Some("a client certificate signed by --proxy-client-ca is required".into());
    };
    let cn = match certs::common_name(leaf) {
        Ok(cn) => cn,
        Err(e) => return Some(format!("client certificate unreadable: {e}")),
    };
    let shown = cn.as_deref().unwrap_or("(none)");
    match certs::is_agent_certificate(leaf) {
        Ok(false) => {}
        Ok(true) => {
            return Some(format!(
                "client certificate CN {shown:?} is an agent (system:nodes) certificate; \
                 agent certificates are never accepted on the front end"
            ))
        }
        Err(e) => return Some(format!("client certificate unreadable: {e}")),
    }
    if let (Some(cn), Ok(not_before)) = (&cn, certs::not_before_unix(leaf)) {
        if let Some(at) = deny.revokes(cn, not_before) {
            return Some(format!(
                "client certificate CN {cn:?} was revoked (at unix time {at}) in --revocation-file"
            ));
        }
    }
    if allowed_names.is_empty() {
        return None;
    }
    match cn {
        Some(cn) if allowed_names.contains(&cn) => None,
        Some(cn) => Some(format!(
            "client certificate CN {cn:?} is not in --proxy-client-name"
        )),
        None => Some("client certificate has no common name".into()),
    }
}

/// The `reason` label of `tunnel_server_frontend_refusals_total` for a refusal message.
fn refusal_label(reason: &str) -> &'static str {
    if reason.contains("system:nodes") {
        "agent_certificate"
    } else if reason.contains("revoked") {
        "revoked"
    } else if reason.contains("--proxy-client-name") {
        "name_not_allowed"
    } else {
        "no_certificate"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    fn der(pem: &str) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()]
    }

    #[test]
    fn agent_certificates_and_revoked_names_are_refused() {
        let ca = certs::CertificateAuthority::generate(Duration::from_secs(86400)).unwrap();
        let id = certs::NodeIdentity::new("edge-2", vec![]).unwrap();
        let agent = der(&ca
            .issue_agent(&id, Duration::from_secs(3600))
            .unwrap()
            .cert_pem);
        let client = der(&ca
            .issue_client("apiserver", Duration::from_secs(3600))
            .unwrap()
            .cert_pem);
        let none = DenyList::default();
        let r = client_refusal(Some(agent.as_slice()), &[], &none).unwrap();
        assert!(
            r.contains("system:nodes") && r.contains("system:node:edge-2"),
            "{r}"
        );
        assert_eq!(refusal_label(&r), "agent_certificate");
        // Even when the operator lists the agent's CN.
        let listed = ["system:node:edge-2".to_string()];
        assert!(client_refusal(Some(agent.as_slice()), &listed, &none).is_some());
        assert_eq!(client_refusal(Some(client.as_slice()), &[], &none), None);

        let deny = DenyList::parse(&format!("apiserver {}", i64::MAX / 2)).unwrap();
        let r = client_refusal(Some(client.as_slice()), &[], &deny).unwrap();
        assert!(r.contains("revoked"), "{r}");
        assert_eq!(refusal_label(&r), "revoked");
        // A revocation older than the certificate does not apply.
        let old = DenyList::parse("apiserver 0").unwrap();
        assert_eq!(client_refusal(Some(client.as_slice()), &[], &old), None);

        let r = client_refusal(None, &[], &none).unwrap();
        assert_eq!(refusal_label(&r), "no_certificate");
        let r = client_refusal(Some(client.as_slice()), &["other".into()], &none).unwrap();
        assert_eq!(refusal_label(&r), "name_not_allowed");
    }
}
