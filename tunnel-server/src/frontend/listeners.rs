//! Accept loops for the front end: Unix socket and TCP with mutual TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use transport::http_server::accept_backoff;

use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use super::{serve_connection, FrontendContext};

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
pub async fn serve_uds(listener: UnixListener, ctx: Arc<FrontendContext>) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                tokio::spawn(serve_connection(sock, ctx.clone(), None));
            }
            Err(e) => accept_backoff("uds", &e).await,
        }
    }
}

/// Serves CONNECT on TCP with TLS; clients must show a certificate signed by
/// the proxy client CA and, if `allowed_names` is not empty, one of those CNs.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    allowed_names: Arc<Vec<String>>,
    ctx: Arc<FrontendContext>,
) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                accept_backoff("proxy-addr", &e).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let ctx = ctx.clone();
        let allowed_names = allowed_names.clone();
        tokio::spawn(async move {
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
            let forbidden = client_refusal(tls.get_ref().1.peer_certificates(), &allowed_names);
            if let Some(reason) = &forbidden {
                tracing::warn!(%peer, %reason, "refusing front-end client");
            }
            serve_connection(tls, ctx, forbidden).await;
        });
    }
}

/// Why a TLS client may not use the front end, or `None` if it may.
fn client_refusal(
    chain: Option<&[rustls_pki_types::CertificateDer<'static>]>,
    allowed_names: &[String],
) -> Option<String> {
    let Some(leaf) = chain.and_then(|c| c.first()) else {
        return Some("a client certificate signed by --proxy-client-ca is required".into());
    };
    if allowed_names.is_empty() {
        return None;
    }
    match certs::common_name(leaf) {
        Ok(Some(cn)) if allowed_names.contains(&cn) => None,
        Ok(Some(cn)) => Some(format!(
            "client certificate CN {cn:?} is not in --proxy-client-name"
        )),
        Ok(None) => Some("client certificate has no common name".into()),
        Err(e) => Some(format!("client certificate unreadable: {e}")),
    }
}
