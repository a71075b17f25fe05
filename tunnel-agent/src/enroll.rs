//! Getting the first certificate from the server's enrollment endpoint with a token.
//!
//! One HTTPS request per attempt on the agent port, under ALPN
//! [`proto::enroll::ALPN_ENROLL`], pinning `--server-ca`. The private key is generated here
//! and only its CSR is sent; the answer is written next to it atomically (key 0600).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use certs::{BootstrapToken, NodeIdentity};
use http_body_util::{BodyExt, Full, Limited};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

use crate::tls_files::AgentTlsFiles;

/// Why a certificate request did not return a certificate.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Worth retrying: network, TLS, timeout, or a server-side failure.
    #[error("{0}")]
    Transient(String),
    /// The server refused this request for good (reused/expired/unknown token, wrong node,
    /// revoked): retrying the same request cannot succeed.
    #[error("server refused: {message}")]
    Refused { message: String },
}

/// Where and how certificate requests are sent.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The server host (also the TLS server name).
    pub host: String,
    /// The agent port.
    pub port: u16,
    /// Limit for one whole request.
    pub timeout: Duration,
}

impl Endpoint {
    /// POSTs `csr_pem` to `path` (with the bootstrap token, if any); returns the PEM answer.
    pub async fn request(
        &self,
        tls: rustls::ClientConfig,
        path: &str,
        token: Option<&BootstrapToken>,
        csr_pem: String,
    ) -> Result<String, RequestError> {
        match tokio::time::timeout(self.timeout, self.exchange(tls, path, token, csr_pem)).await {
            Ok(r) => r,
            Err(_) => Err(RequestError::Transient(format!(
                "no answer from {}:{} within {:?}",
                self.host, self.port, self.timeout
            ))),
        }
    }

    async fn exchange(
        &self,
        tls: rustls::ClientConfig,
        path: &str,
        token: Option<&BootstrapToken>,
        csr_pem: String,
    ) -> Result<String, RequestError> {
        let transient = |what: &str, e: &dyn std::fmt::Display| {
            RequestError::Transient(format!("{what} {}:{}: {e}", self.host, self.port))
        };
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| transient("connecting to", &e))?;
        let name =
            ServerName::try_from(self.host.clone()).map_err(|e| transient("server name", &e))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| transient("TLS handshake with", &e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| transient("HTTP with", &e))?;
        let conn = tokio::spawn(conn);
        let mut req = Request::post(path)
            .header(hyper::header::HOST, self.host.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/pkcs10");
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(csr_pem)))
            .map_err(|e| transient("building the request for", &e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| transient("sending the request to", &e))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), proto::enroll::MAX_BODY_LEN)
            .collect()
            .await
            .map_err(|e| transient("reading the answer of", &e))?
            .to_bytes();
        conn.abort();
        let text = String::from_utf8_lossy(&body).trim().to_owned();
        if status == 200 {
            Ok(text)
        } else if proto::enroll::is_permanent_failure(status) {
            Err(RequestError::Refused {
                message: format!("{status}: {text}"),
            })
        } else {
            Err(RequestError::Transient(format!(
                "server answered {status}: {text}"
            )))
        }
    }
}

/// Enrolls with `token`: new key, CSR for `wanted`, certificate from the server, files written.
pub async fn enroll(
    endpoint: &Endpoint,
    files: &AgentTlsFiles,
    token: &BootstrapToken,
    wanted: &NodeIdentity,
) -> Result<(), RequestError> {
    let roots = certs::load_root_store(&files.server_ca)
        .map_err(|e| RequestError::Transient(e.to_string()))?;
    let tls = certs::enroll_client_config(roots, vec![proto::enroll::ALPN_ENROLL.to_vec()])
        .map_err(|e| RequestError::Transient(e.to_string()))?;
    let request =
        certs::agent_key_request(wanted).map_err(|e| RequestError::Transient(e.to_string()))?;
    let cert_pem = endpoint
        .request(
            tls,
            proto::enroll::ENROLL_PATH,
            Some(token),
            request.csr_pem.clone(),
        )
        .await?;
    save(files, &request.key_pem, &cert_pem).map_err(|e| RequestError::Transient(e.to_string()))
}

/// Checks that key and certificate match, then writes them (key 0600,
/// certificate 0644) so that no crash leaves a mismatched pair ([`crate::key_pair`]).
pub fn save(files: &AgentTlsFiles, key_pem: &str, cert_pem: &str) -> Result<(), certs::CertError> {
    let der =
        certs::load::first_cert_der(cert_pem).ok_or_else(|| certs::CertError::InvalidPem {
            path: files.cert.clone(),
            reason: "the server's answer holds no certificate".into(),
        })?;
    let key = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            certs::CertError::InvalidPem {
                path: files.key.clone(),
                reason: format!("new private key: {e}"),
            }
        })?
    };
    certs::load::check_key_matches(std::slice::from_ref(&der), &key).map_err(|reason| {
        certs::CertError::InvalidPem {
            path: files.cert.clone(),
            reason: format!("the server's answer: {reason}"),
        }
    })?;
    for dir in [parent(&files.key), parent(&files.cert)]
        .into_iter()
        .flatten()
    {
        std::fs::create_dir_all(dir).map_err(|source| certs::CertError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    crate::key_pair::save(&files.key, &files.cert, key_pem, cert_pem)?;
    if let Ok(not_after) = certs::not_after_unix(&der) {
        files.metrics.certificate_expiry.set(not_after);
    }
    Ok(())
}

fn parent(p: &Path) -> Option<&Path> {
    p.parent().filter(|d| !d.as_os_str().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn files(tag: &str) -> (AgentTlsFiles, PathBuf) {
        let dir = std::env::temp_dir().join(format!("agent-save-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = AgentTlsFiles {
            cert: dir.join("sub/agent.crt"),
            key: dir.join("sub/agent.key"),
            server_ca: dir.join("ca.crt"),
            metrics: crate::metrics::AgentMetrics::new().unwrap(),
        };
        (files, dir)
    }

    fn issued(node: &str) -> (String, String) {
        let ca = certs::CertificateAuthority::generate(Duration::from_secs(3600)).unwrap();
        let id = NodeIdentity::new(node, vec![]).unwrap();
        let req = certs::agent_key_request(&id).unwrap();
        let cert = ca
            .sign_agent_csr(&req.csr_pem, &id, Duration::from_secs(60), None)
            .unwrap();
        (req.key_pem, cert)
    }

    #[test]
    fn save_writes_a_private_key_and_its_certificate() {
        let (files, dir) = files("ok");
        let (key, cert) = issued("edge-1");
        save(&files, &key, &cert).unwrap();
        let mode = std::fs::metadata(&files.key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&files.cert).unwrap(), cert);
        assert!(files.metrics.certificate_expiry.get() > 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn save_refuses_a_certificate_for_another_key_and_writes_nothing() {
        let (files, dir) = files("mismatch");
        let (key, _) = issued("edge-1");
        let (_, other_cert) = issued("edge-1");
        let err = save(&files, &key, &other_cert).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
        assert!(!files.key.exists() && !files.cert.exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
