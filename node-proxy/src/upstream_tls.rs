//! TLS client settings for the apiserver: trust roots and the two identities
//! (the node's certificate, or none when the request carries its own token).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

use crate::cert_files::ReloadingCertFiles;

/// The TLS side of the upstream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    #[error("--hub-apiserver-ca {path}: {source}")]
    Ca {
        path: PathBuf,
        source: certs::CertError,
    },
    #[error("the system trust store holds no usable certificate (pass --hub-apiserver-ca)")]
    NoSystemRoots,
    #[error("hub client certificate: {0}")]
    ClientCert(String),
    #[error("building the apiserver TLS client: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The two client configurations the hub dials with.
#[derive(Clone)]
pub struct UpstreamTls {
    /// Presents the hub client certificate (requests without their own credentials).
    pub with_node_cert: Arc<ClientConfig>,
    /// Presents no certificate (requests carrying a bearer token).
    pub anonymous: Arc<ClientConfig>,
}

impl UpstreamTls {
    /// Loads the CA (or the system roots) and the client certificate (which
    /// is re-read whenever its files change, see [`ReloadingCertFiles`]).
    pub fn load(
        ca: Option<&Path>,
        client_cert: &Path,
        client_key: &Path,
    ) -> Result<Self, UpstreamTlsError> {
        let roots = match ca {
            Some(p) => certs::load_root_store(p).map_err(|source| UpstreamTlsError::Ca {
                path: p.to_path_buf(),
                source,
            })?,
            None => system_roots()?,
        };
        let client = ReloadingCertFiles::new("hub client certificate", client_cert, client_key)
            .map_err(UpstreamTlsError::ClientCert)?;
        let builder = || {
            ClientConfig::builder_with_provider(certs::provider())
                .with_protocol_versions(rustls::ALL_VERSIONS)
                .map(|b| b.with_root_certificates(roots.clone()))
        };
        let mut with_node_cert = builder()?.with_client_cert_resolver(Arc::new(client));
        let mut anonymous = builder()?.with_no_client_auth();
        // HTTP/1.1 only: watch streams and upgrades (exec, port-forward) need it.
        with_node_cert.alpn_protocols = vec![b"http/1.1".to_vec()];
        anonymous.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            with_node_cert: Arc::new(with_node_cert),
            anonymous: Arc::new(anonymous),
        })
    }
}

/// The operating system's trust store; unparsable entries are skipped and logged.
fn system_roots() -> Result<RootCertStore, UpstreamTlsError> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!(error = %e, "reading the system trust store");
    }
    let mut roots = RootCertStore::empty();
    let (_added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "system trust store entries that are not usable CA certificates"
        );
    }
    if roots.is_empty() {
        return Err(UpstreamTlsError::NoSystemRoots);
    }
    Ok(roots)
}
