//! Certificate and key files re-read from disk when they change: the hub's
//! client certificate, and a pre-provisioned serving certificate of the
//! HTTPS listener (`--hub-serving-cert`).
//!
//! By default the hub presents the agent's own certificate, which the agent
//! renews over the tunnel at 2/3 of its lifetime (and kubelet rotates its own
//! when `--hub-client-cert` points there); an operator's tooling (cert-manager,
//! a script) replaces serving files in place. A certificate loaded once at
//! startup would expire under a long-running hub; instead every new TLS
//! handshake checks the files' modification times (one `stat` each) and
//! loads the new pair when they changed. A pair that does not load
//! (half-written, mismatched) keeps the previous one in use and is logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Resolves a certificate from `cert`/`key`, reloading on change; as a
/// client certificate (upstream) or a server certificate (HTTPS listener).
#[derive(Debug)]
pub struct ReloadingCertFiles {
    /// What the pair is, for logs ("hub client certificate").
    what: &'static str,
    cert: PathBuf,
    key: PathBuf,
    current: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamp: (Option<SystemTime>, Option<SystemTime>),
    key: Arc<CertifiedKey>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = certs::load_cert_chain(cert).map_err(|e| e.to_string())?;
    let der = certs::load_private_key(key).map_err(|e| e.to_string())?;
    certified_key(chain, der).map_err(|e| {
        format!(
            "{} does not belong to {} or is unusable: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// A rustls signing identity from a chain and its key, refusing a key that
/// does not belong to the leaf.
pub fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, String> {
    let signing = certs::provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| e.to_string())?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| e.to_string())?;
    Ok(Arc::new(pair))
}

impl ReloadingCertFiles {
    /// Loads the pair now; fails (naming the file) if it is unusable at startup.
    pub fn new(what: &'static str, cert: &Path, key: &Path) -> Result<Self, String> {
        let stamp = (modified(cert), modified(key));
        let loaded = load(cert, key)?;
        Ok(Self {
            what,
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Mutex::new(Loaded { stamp, key: loaded }),
        })
    }

    /// The pair to present now, reloaded first if the files changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = (modified(&self.cert), modified(&self.key));
        if stamp != cur.stamp {
            match load(&self.cert, &self.key) {
                Ok(k) => {
                    tracing::info!(cert = %self.cert.display(), what = self.what, "certificate changed on disk; using the new one");
                    cur.key = k;
                    cur.stamp = stamp;
                }
                // Keep the stamp: a half-written pair is retried next time.
                Err(e) => {
                    tracing::warn!(error = %e, what = self.what, "certificate changed on disk but does not load; keeping the previous one")
                }
            }
        }
        cur.key.clone()
    }
}

impl ResolvesServerCert for ReloadingCertFiles {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCertFiles {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(dir: &Path, node: &str) -> (PathBuf, PathBuf) {
        let id = certs::NodeIdentity::new(node, vec!["10.0.0.1".parse().unwrap()]).unwrap();
        certs::issue_agent_files(dir, &id, true).unwrap();
        (
            dir.join(certs::bundle::agent_cert_file(node)),
            dir.join(certs::bundle::agent_key_file(node)),
        )
    }

    fn leaf(k: &CertifiedKey) -> Vec<u8> {
        k.cert[0].as_ref().to_vec()
    }

    #[test]
    fn a_changed_pair_is_used_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        certs::init_cluster(dir.path(), "localhost", &[], false).unwrap();
        let (cert, key) = issue(dir.path(), "edge-a");
        let r = ReloadingCertFiles::new("test pair", &cert, &key).unwrap();
        let first = leaf(&r.current());
        assert_eq!(
            leaf(&r.current()),
            first,
            "unchanged files: same certificate"
        );

        // Renewed in place (same paths, new contents and mtime).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (c2, k2) = issue(dir.path(), "edge-a");
        assert_eq!((c2, k2), (cert.clone(), key.clone()));
        let second = leaf(&r.current());
        assert_ne!(second, first, "renewed files are picked up");

        // A truncated certificate keeps the last good pair.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nAAA").unwrap();
        assert_eq!(leaf(&r.current()), second);
    }
}
