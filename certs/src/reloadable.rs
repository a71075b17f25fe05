//! TLS material that can be replaced while listeners keep running.
//!
//! A rustls `ServerConfig` is immutable once shared, so the server's certificate and the CA
//! that verifies clients sit behind these two holders: configs built over them stay the
//! same objects (QUIC endpoint, TCP acceptors), new handshakes see whatever was last
//! swapped in, and established connections are untouched.

use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::CertError;

/// The server's certificate and key, replaceable at run time.
#[derive(Debug)]
pub struct ReloadableServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableServerCert {
    /// Starts with `chain` and `key` (checked to belong together).
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, CertError> {
        Ok(Self {
            current: RwLock::new(certified_key(chain, key)?),
        })
    }

    /// Replaces the certificate for every later handshake; on error the old one stays.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), CertError> {
        let new = certified_key(chain, key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    /// The leaf certificate now being served.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current().cert.first().cloned()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ReloadableServerCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Builds a rustls signing identity, refusing a key that does not match the certificate.
fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, CertError> {
    const WHAT: &str = "server certificate";
    let signing_key = crate::tls::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|source| CertError::Tls { what: WHAT, source })?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|source| CertError::Tls { what: WHAT, source })?;
    Ok(Arc::new(certified))
}

/// Verifies client certificates (required) against a CA bundle replaceable at run time.
///
/// Clones share the bundle, so one [`Self::replace`] updates every config built over it.
#[derive(Debug, Clone)]
pub struct ReloadableClientVerifier {
    current: Arc<RwLock<Arc<dyn ClientCertVerifier>>>,
}

impl ReloadableClientVerifier {
    /// Starts with `roots`.
    pub fn new(roots: RootCertStore) -> Result<Self, CertError> {
        Ok(Self {
            current: Arc::new(RwLock::new(webpki_verifier(roots)?)),
        })
    }

    /// Replaces the CA bundle for every later handshake (all clones); on error the old stays.
    pub fn replace(&self, roots: RootCertStore) -> Result<(), CertError> {
        let new = webpki_verifier(roots)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(())
    }

    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A WebPKI verifier over `roots` (client certificate required).
fn webpki_verifier(roots: RootCertStore) -> Result<Arc<dyn ClientCertVerifier>, CertError> {
    const WHAT: &str = "agent-facing server";
    if roots.is_empty() {
        return Err(CertError::EmptyRootStore { what: WHAT });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider())
        .build()
        .map_err(|source| CertError::Verifier { what: WHAT, source })
}

impl ClientCertVerifier for ReloadableClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: our agents hold one certificate, and the bundle may change under us.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
    }
}
