//! The HTTPS listener for pods (`--hub-https-addr`) and its serving certificate.
//!
//! Pods verify the cluster CA, so the certificate comes either from files an
//! operator provisions (`--hub-serving-cert`/`--hub-serving-key`, reloaded
//! when they change, `cert_files.rs`) or from the cluster's own
//! CertificateSigningRequest API (`issuer.rs`, kubelet's serving-certificate
//! flow). [`ServingCert`] is the resolver behind the listener either way: a
//! swap of the issued certificate reaches new handshakes only, so open
//! connections are not dropped.

mod issuer;
pub mod plan;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::cert_files::ReloadingCertFiles;

pub use issuer::{run_issuer, IssuerCtx, SERVING_DIR};

/// Where the listener's certificate comes from.
#[derive(Debug)]
pub enum ServingCert {
    /// Pre-provisioned files, re-read when they change.
    Files(ReloadingCertFiles),
    /// Issued through the CSR API; empty until the first certificate arrives.
    Issued(IssuedSlot),
}

/// The CSR-issued certificate now served (none yet: handshakes fail).
#[derive(Debug, Default)]
pub struct IssuedSlot {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// "No certificate yet" was logged (once, not per handshake).
    warned: AtomicBool,
}

impl IssuedSlot {
    /// Serves `key` from the next handshake on.
    pub fn install(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    fn get(&self) -> Option<Arc<CertifiedKey>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if current.is_none() && !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!("HTTPS listener: no serving certificate yet (CSR pending, or offline without one on disk); TLS handshakes fail until one is issued");
        }
        current
    }
}

impl ServingCert {
    /// Serves a newly issued certificate (no-op for pre-provisioned files).
    pub fn install(&self, key: Arc<CertifiedKey>) {
        if let ServingCert::Issued(slot) = self {
            slot.install(key);
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self {
            ServingCert::Files(files) => Some(files.current()),
            ServingCert::Issued(slot) => slot.get(),
        }
    }
}

/// The listener's TLS: 1.2 and 1.3, no client certificates (pods present
/// tokens), ALPN `http/1.1` only (the hub serves HTTP/1.1; client-go then
/// speaks it, watches and upgrades included).
pub fn server_config(cert: Arc<ServingCert>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(certs::provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
