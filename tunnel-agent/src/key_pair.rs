//! Writing a new key and certificate so that no crash leaves a mismatched pair.
//!
//! `--tls-key` and `--tls-cert` are two files, so replacing both cannot be one
//! atomic step. A save therefore first writes the new pair as one combined PEM
//! file, `<tls-cert>.pending` (key then certificate, mode 0600), which appears
//! atomically, complete or not at all. Then key and certificate are replaced
//! (each atomically) and the pending file is deleted. After a crash at any
//! point either the old pair is untouched or the pending file is complete, so
//! the loader ([`recover`], run before every load) installs a pending pair it
//! finds and the agent continues with the newest certificate it was issued.

use std::path::{Path, PathBuf};

use certs::atomic_file::{write_atomic, CERT_MODE, KEY_MODE};
use certs::CertError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The combined file of a save in progress, beside the certificate.
pub fn pending_path(cert: &Path) -> PathBuf {
    let mut name = cert.file_name().unwrap_or_default().to_os_string();
    name.push(".pending");
    cert.with_file_name(name)
}

/// The steps of a save, in order; a crash can stop it after any of them.
const STEPS: usize = 4;

/// Saves a checked pair: pending file, key, certificate, pending deleted.
pub fn save(key: &Path, cert: &Path, key_pem: &str, cert_pem: &str) -> Result<(), CertError> {
    save_steps(key, cert, key_pem, cert_pem, STEPS)
}

/// Runs the first `steps` steps of a save (all of them outside tests).
fn save_steps(
    key: &Path,
    cert: &Path,
    key_pem: &str,
    cert_pem: &str,
    steps: usize,
) -> Result<(), CertError> {
    let pending = pending_path(cert);
    let key_pem = key_pem.trim_end();
    let combined = format!("{key_pem}\n{cert_pem}");
    let actions: [&dyn Fn() -> Result<(), CertError>; STEPS] = [
        &|| {
            write_atomic(&pending, combined.as_bytes(), KEY_MODE)?;
            sync_dir(&pending)
        },
        &|| write_atomic(key, format!("{key_pem}\n").as_bytes(), KEY_MODE),
        &|| write_atomic(cert, cert_pem.as_bytes(), CERT_MODE),
        &|| {
            std::fs::remove_file(&pending).map_err(|source| CertError::Write {
                path: pending.clone(),
                source,
            })?;
            sync_dir(&pending)
        },
    ];
    for action in actions.iter().take(steps) {
        action()?;
    }
    Ok(())
}

/// Makes the renames in `path`'s directory durable.
fn sync_dir(path: &Path) -> Result<(), CertError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| CertError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

/// Completes an interrupted save: a pending pair that parses and matches is
/// installed (key, then certificate), one that does not is deleted. Returns
/// whether a pair was installed.
pub fn recover(key: &Path, cert: &Path) -> Result<bool, CertError> {
    let pending = pending_path(cert);
    let text = match std::fs::read_to_string(&pending) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(CertError::Read {
                path: pending,
                source,
            })
        }
    };
    let Some((key_pem, cert_pem)) = split_pending(&text) else {
        tracing::warn!(path = %pending.display(), "deleting an unusable pending key and certificate");
        let _ = std::fs::remove_file(&pending);
        return Ok(false);
    };
    save_steps(key, cert, &key_pem, &cert_pem, STEPS)?;
    tracing::warn!(key = %key.display(), cert = %cert.display(),
        "a certificate save was interrupted (crash?); installed the new key and certificate it left");
    Ok(true)
}

/// The key and certificate PEM texts of a pending file, if they form a matching pair.
fn split_pending(text: &str) -> Option<(String, String)> {
    let at = text.find("-----BEGIN CERTIFICATE-----")?;
    let (key_pem, cert_pem) = text.split_at(at);
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).ok()?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .ok()?;
    certs::load::check_key_matches(&chain, &key).ok()?;
    Some((key_pem.to_string(), cert_pem.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use certs::NodeIdentity;
    use std::time::Duration;

    fn issued(ca: &certs::CertificateAuthority) -> (String, String) {
        let id = NodeIdentity::new("edge-1", vec![]).unwrap();
        let req = certs::agent_key_request(&id).unwrap();
        let cert = ca
            .sign_agent_csr(&req.csr_pem, &id, Duration::from_secs(600), None)
            .unwrap();
        (req.key_pem, cert)
    }

    /// The pair on disk, if it loads and matches.
    fn loaded(key: &Path, cert: &Path) -> Option<String> {
        certs::load_cert_and_key(cert, key).ok()?;
        std::fs::read_to_string(cert).ok()
    }

    #[test]
    fn a_crash_after_any_step_leaves_a_pair_the_loader_can_use() {
        let ca = certs::CertificateAuthority::generate(Duration::from_secs(3600)).unwrap();
        let (old_key, old_cert) = issued(&ca);
        let (new_key, new_cert) = issued(&ca);
        // Renewal (an old pair in place) and enrollment (nothing yet).
        for had_old_pair in [true, false] {
            for crash_after in 0..=STEPS {
                let dir = tempfile::tempdir().unwrap();
                let (key, cert) = (dir.path().join("agent.key"), dir.path().join("agent.crt"));
                if had_old_pair {
                    save(&key, &cert, &old_key, &old_cert).unwrap();
                }
                save_steps(&key, &cert, &new_key, &new_cert, crash_after).unwrap();
                let case = format!("old pair {had_old_pair}, crash after step {crash_after}");
                let before = loaded(&key, &cert);
                if crash_after == 2 {
                    assert_eq!(before, None, "{case}: new key, old or no certificate");
                }
                let installed = recover(&key, &cert).unwrap();
                assert_eq!(installed, (1..STEPS).contains(&crash_after), "{case}");
                let after = loaded(&key, &cert);
                let want = match (crash_after, had_old_pair) {
                    (0, true) => Some(old_cert.clone()),
                    (0, false) => None,
                    _ => Some(new_cert.clone()),
                };
                assert_eq!(after, want, "{case}");
                assert!(!pending_path(&cert).exists(), "{case}: pending left");
            }
        }
    }

    #[test]
    fn an_unusable_pending_file_is_deleted_and_the_pair_kept() {
        let ca = certs::CertificateAuthority::generate(Duration::from_secs(3600)).unwrap();
        let (key_pem, cert_pem) = issued(&ca);
        let (other_key, _) = issued(&ca);
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("a.key"), dir.path().join("a.crt"));
        save(&key, &cert, &key_pem, &cert_pem).unwrap();
        std::fs::write(pending_path(&cert), format!("{other_key}{cert_pem}")).unwrap();
        assert!(!recover(&key, &cert).unwrap());
        assert!(!pending_path(&cert).exists());
        assert_eq!(loaded(&key, &cert), Some(cert_pem));
    }
}
