//! The agent's certificate files: loaded from disk for every connection attempt.
//!
//! Reading them each time is what lets a renewed certificate take effect on the next
//! connection, and lets an agent whose files are missing, unreadable, truncated or
//! mismatched keep retrying (each failure names the file and why) instead of exiting.

use std::path::PathBuf;
use std::time::Duration;

use certs::{BootstrapToken, CertError, NodeIdentity};

use crate::backoff::Backoff;
use crate::enroll::{Endpoint, RequestError};
use crate::metrics::AgentMetrics;

/// `--tls-cert`, `--tls-key`, `--server-ca`.
#[derive(Clone)]
pub struct AgentTlsFiles {
    /// `--tls-cert` (written by enrollment and renewal).
    pub cert: PathBuf,
    /// `--tls-key` (written with mode 0600).
    pub key: PathBuf,
    /// `--server-ca`, pinned for every connection and for enrollment.
    pub server_ca: PathBuf,
    /// Receives the certificate's expiry each time it is loaded.
    pub metrics: AgentMetrics,
}

/// Everything read from the files, checked to fit together.
pub struct LoadedIdentity {
    /// The certificate chain, leaf first.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Its private key.
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    /// The server CA.
    pub roots: rustls::RootCertStore,
    /// Node name and IPs in the certificate.
    pub identity: NodeIdentity,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl AgentTlsFiles {
    /// Reads and checks the three files (the key must match the certificate),
    /// first completing a key/certificate save a crash interrupted.
    pub fn load(&self) -> Result<LoadedIdentity, CertError> {
        crate::key_pair::recover(&self.key, &self.cert)?;
        let (chain, key) = certs::load_cert_and_key(&self.cert, &self.key)?;
        let roots = certs::load_root_store(&self.server_ca)?;
        let in_cert = |e: CertError| CertError::InvalidPem {
            path: self.cert.clone(),
            reason: e.to_string(),
        };
        let leaf = chain.first().ok_or_else(|| CertError::InvalidPem {
            path: self.cert.clone(),
            reason: "no certificate".into(),
        })?;
        let identity = certs::agent_identity(leaf).map_err(in_cert)?;
        let not_before = certs::not_before_unix(leaf).map_err(in_cert)?;
        let not_after = certs::not_after_unix(leaf).map_err(in_cert)?;
        self.metrics.certificate_expiry.set(not_after);
        Ok(LoadedIdentity {
            chain,
            key,
            roots,
            identity,
            not_before,
            not_after,
        })
    }

    /// A client config presenting the current certificate, offering `alpn`.
    pub fn client_config(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, CertError> {
        let loaded = self.load()?;
        certs::agent_client_config(loaded.roots, loaded.chain, loaded.key, vec![alpn.to_vec()])
    }

    /// True when neither the certificate nor the key exists yet, nor a pending
    /// pair from an interrupted enrollment (a node to enroll).
    fn absent(&self) -> bool {
        !self.cert.exists()
            && !self.key.exists()
            && !crate::key_pair::pending_path(&self.cert).exists()
    }
}

/// How often the files are looked at again after a permanent enrollment refusal.
const AFTER_REFUSAL: Duration = Duration::from_secs(30);

/// Returns once the files load: enrolls with `token` if there are none, otherwise retries
/// (with backoff, logging why) until they are usable. Never gives up; never resends a
/// token the server refused for good.
pub async fn wait_until_usable(
    files: &AgentTlsFiles,
    token: Option<&BootstrapToken>,
    wanted: &NodeIdentity,
    endpoint: &Endpoint,
) -> LoadedIdentity {
    let mut backoff = Backoff::default();
    let mut token = token;
    loop {
        let delay = match (token, files.absent()) {
            (Some(t), true) => match crate::enroll::enroll(endpoint, files, t, wanted).await {
                Ok(()) => {
                    tracing::info!(node = %wanted.node_name, cert = %files.cert.display(),
                        "enrolled: certificate written");
                    continue;
                }
                Err(e @ RequestError::Refused { .. }) => {
                    tracing::error!(node = %wanted.node_name, token = t.id(), error = %e,
                        "ENROLLMENT REFUSED: this token will not be retried; create a new token \
                         (tunnel-server certs token create) and restart the agent with it");
                    token = None;
                    AFTER_REFUSAL
                }
                Err(e) => {
                    let d = backoff.next_delay(rand::random::<f64>());
                    tracing::warn!(node = %wanted.node_name, error = %e, delay_ms = d.as_millis() as u64,
                        "enrollment failed; retrying");
                    d
                }
            },
            (None, true) => {
                tracing::warn!(cert = %files.cert.display(), key = %files.key.display(),
                    "no certificate or key yet and no usable --bootstrap-token; waiting for the files");
                AFTER_REFUSAL
            }
            _ => match files.load() {
                Ok(loaded) => return loaded,
                Err(e) => {
                    let d = backoff.next_delay(rand::random::<f64>());
                    tracing::error!(error = %e, delay_ms = d.as_millis() as u64,
                        "cannot use the certificate files; retrying");
                    d
                }
            },
        };
        tokio::time::sleep(delay).await;
    }
}
