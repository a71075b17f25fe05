//! Loading certificates, keys and CA bundles from PEM files, with errors that say what is wrong.

use std::io::Cursor;
use std::path::Path;

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::CertError;

/// Loads every certificate in a PEM file, leaf first, e.g. `server.crt` or `agent-x.crt`.
///
/// Fails if the file is missing, empty, not PEM, holds no certificate, or holds a
/// certificate that is not valid X.509.
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let sections = read_pem(path)?;
    let kinds = describe_kinds(&sections);
    let certs: Vec<CertificateDer<'static>> = sections
        .into_iter()
        .filter_map(|(kind, der)| CertificateDer::from_pem(kind, der))
        .collect();
    if certs.is_empty() {
        return Err(invalid(
            path,
            format!("no certificate found in PEM (found {kinds})"),
        ));
    }
    for (i, cert) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(cert).map_err(|e| {
            invalid(
                path,
                format!("certificate #{} is not valid X.509: {e}", i + 1),
            )
        })?;
    }
    Ok(certs)
}

/// Loads the single private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
///
/// The key is also checked to be usable by the crypto provider, so a bad key is reported
/// here with its path rather than later during a TLS config build.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let sections = read_pem(path)?;
    let kinds = describe_kinds(&sections);
    let mut keys = sections
        .into_iter()
        .filter_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der));
    let Some(key) = keys.next() else {
        return Err(invalid(
            path,
            format!("no private key found in PEM (found {kinds})"),
        ));
    };
    if keys.next().is_some() {
        return Err(invalid(
            path,
            "more than one private key found in PEM".to_owned(),
        ));
    }
    crate::tls::provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| invalid(path, format!("unsupported or malformed private key: {e}")))?;
    Ok(key)
}

/// Loads a certificate chain and its private key, checking that the key belongs to the leaf.
///
/// A mismatched pair is reported naming both files, instead of as a TLS handshake failure
/// later (where the peer only sees "decrypt error").
pub fn load_cert_and_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CertError> {
    let chain = load_cert_chain(cert_path)?;
    let key = load_private_key(key_path)?;
    check_key_matches(&chain, &key).map_err(|reason| {
        invalid(
            key_path,
            format!("{reason} (certificate: {})", cert_path.display()),
        )
    })?;
    Ok((chain, key))
}

/// Checks that `key` is the private key of the first certificate in `chain`.
pub fn check_key_matches(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'_>,
) -> Result<(), String> {
    let signing_key = crate::tls::provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| format!("unsupported or malformed private key: {e}"))?;
    let certified = rustls::sign::CertifiedKey::new(chain.to_vec(), signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("private key does not match the certificate: {e}"))
}

/// The first certificate in PEM text (e.g. one just issued or received), if any.
pub fn first_cert_der(pem: &str) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
}

/// The `notAfter` (Unix seconds) of the first certificate in PEM text, for expiry metrics.
pub fn first_cert_not_after(pem: &str) -> Option<i64> {
    first_cert_der(pem).and_then(|der| crate::not_after_unix(&der).ok())
}

/// Loads a CA bundle as a trust store; every certificate in the file becomes a trust anchor.
pub fn load_root_store(path: &Path) -> Result<rustls::RootCertStore, CertError> {
    let mut store = rustls::RootCertStore::empty();
    for (i, cert) in load_cert_chain(path)?.into_iter().enumerate() {
        store.add(cert).map_err(|e| {
            invalid(
                path,
                format!("certificate #{} cannot be used as a CA: {e}", i + 1),
            )
        })?;
    }
    Ok(store)
}

/// Shorthand for an [`CertError::InvalidPem`] naming `path`.
fn invalid(path: &Path, reason: String) -> CertError {
    CertError::InvalidPem {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads `path` and splits it into recognised PEM sections, failing if there are none.
fn read_pem(path: &Path) -> Result<Vec<(SectionKind, Vec<u8>)>, CertError> {
    let bytes = std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid(path, "file is empty".to_owned()));
    }
    let mut reader = Cursor::new(&bytes);
    let mut sections = Vec::new();
    loop {
        match pem::from_buf(&mut reader) {
            Ok(Some(section)) => sections.push(section),
            Ok(None) => break,
            Err(e) => return Err(invalid(path, format!("invalid PEM: {e}"))),
        }
    }
    if sections.is_empty() {
        return Err(invalid(path, no_sections_reason(&bytes)));
    }
    Ok(sections)
}

/// Explains why a non-empty file yielded no usable PEM section.
fn no_sections_reason(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        "encrypted private keys are not supported; decrypt it first".to_owned()
    } else if let Some(label) = text
        .split("-----BEGIN ")
        .nth(1)
        .and_then(|rest| rest.split("-----").next())
    {
        format!("unsupported PEM section {label:?}")
    } else if bytes.first() == Some(&0x30) {
        "file looks like DER; expected PEM (\"-----BEGIN ...\")".to_owned()
    } else {
        "not PEM: no \"-----BEGIN\" line found".to_owned()
    }
}

/// Lists the PEM section labels found, e.g. `PRIVATE KEY, CERTIFICATE`, for error messages.
fn describe_kinds(sections: &[(SectionKind, Vec<u8>)]) -> String {
    let mut labels: Vec<&str> = Vec::new();
    for (kind, _) in sections {
        let label = match kind {
            SectionKind::Certificate => "CERTIFICATE",
            SectionKind::PublicKey => "PUBLIC KEY",
            SectionKind::RsaPrivateKey => "RSA PRIVATE KEY",
            SectionKind::PrivateKey => "PRIVATE KEY",
            SectionKind::EcPrivateKey => "EC PRIVATE KEY",
            SectionKind::Crl => "X509 CRL",
            SectionKind::Csr => "CERTIFICATE REQUEST",
            _ => "other",
        };
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    labels.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{CertificateAuthority, DEFAULT_CA_VALIDITY, DEFAULT_CERT_VALIDITY};
    use crate::test_util::TempDir;

    fn write(dir: &TempDir, name: &str, contents: &[u8]) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Asserts the error is a file error mentioning `path` and `needle`.
    fn assert_err_names(err: CertError, path: &Path, needle: &str) {
        let msg = err.to_string();
        assert!(
            msg.contains(&path.display().to_string()),
            "message {msg:?} lacks path"
        );
        assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}");
    }

    #[test]
    fn round_trip_issued_cert_and_key() {
        let dir = TempDir::new();
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let issued = ca
            .issue_server("tunnel.local", &[], DEFAULT_CERT_VALIDITY)
            .unwrap();
        let chain_pem = format!("{}{}", issued.cert_pem, ca.cert_pem());
        let crt = write(&dir, "server.crt", chain_pem.as_bytes());
        let key = write(&dir, "server.key", issued.key_pem.as_bytes());
        let ca_path = write(&dir, "ca.crt", ca.cert_pem().as_bytes());

        let chain = load_cert_chain(&crt).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(&chain[1], ca.cert_der());
        assert!(matches!(
            load_private_key(&key).unwrap(),
            PrivateKeyDer::Pkcs8(_)
        ));
        assert_eq!(load_root_store(&ca_path).unwrap().len(), 1);
        // A bundle: every certificate is trusted.
        assert_eq!(load_root_store(&crt).unwrap().len(), 2);
    }

    #[test]
    fn sec1_key_accepted() {
        // SEC1 ("EC PRIVATE KEY") P-256 key, as written by `openssl ecparam -genkey -noout` (test-only key).
        let pem = "-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIJL/FL9ZswOrEZMJxaKyB4nDK3oWUz3yuawYAOHhSA7XoAoGCCqGSM49\n\
AwEHoUQDQgAEH9aNHW7TcB4EK3MubgWx3wZD4wboFvESOMLvv78vKzzeuT/KChfp\n\
tcWmNj7xAsz5BR+8JdC/PXrq9pHgeAOvfw==\n\
-----END EC PRIVATE KEY-----\n";
        let dir = TempDir::new();
        let path = write(&dir, "sec1.key", pem.as_bytes());
        assert!(matches!(
            load_private_key(&path).unwrap(),
            PrivateKeyDer::Sec1(_)
        ));
    }

    #[test]
    fn missing_file() {
        let dir = TempDir::new();
        let path = dir.path().join("nope.crt");
        let err = load_cert_chain(&path).unwrap_err();
        assert!(matches!(err, CertError::Read { .. }));
        assert_err_names(err, &path, "reading");
        assert_err_names(load_private_key(&path).unwrap_err(), &path, "reading");
        assert_err_names(load_root_store(&path).unwrap_err(), &path, "reading");
    }

    #[test]
    fn empty_file() {
        let dir = TempDir::new();
        let path = write(&dir, "empty.crt", b"\n  \n");
        assert_err_names(load_cert_chain(&path).unwrap_err(), &path, "file is empty");
        assert_err_names(load_private_key(&path).unwrap_err(), &path, "file is empty");
    }

    #[test]
    fn garbage() {
        let dir = TempDir::new();
        let path = write(&dir, "garbage.crt", b"hello, I am not a certificate\n");
        assert_err_names(load_cert_chain(&path).unwrap_err(), &path, "not PEM");
        assert_err_names(load_private_key(&path).unwrap_err(), &path, "not PEM");
        let der = write(&dir, "cert.der", &[0x30, 0x82, 0x01, 0x00, 0x01]);
        assert_err_names(load_cert_chain(&der).unwrap_err(), &der, "looks like DER");
    }

    #[test]
    fn key_file_passed_as_cert_and_vice_versa() {
        let dir = TempDir::new();
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let key = write(&dir, "ca.key", ca.key_pem().as_bytes());
        let crt = write(&dir, "ca.crt", ca.cert_pem().as_bytes());
        assert_err_names(
            load_cert_chain(&key).unwrap_err(),
            &key,
            "no certificate found in PEM (found PRIVATE KEY)",
        );
        assert_err_names(
            load_root_store(&key).unwrap_err(),
            &key,
            "no certificate found",
        );
        assert_err_names(
            load_private_key(&crt).unwrap_err(),
            &crt,
            "no private key found in PEM (found CERTIFICATE)",
        );
    }

    #[test]
    fn truncated_pem() {
        let dir = TempDir::new();
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let pem = ca.cert_pem();
        let cut = &pem[..pem.len() / 2];
        let path = write(&dir, "cut.crt", cut.as_bytes());
        assert_err_names(load_cert_chain(&path).unwrap_err(), &path, "invalid PEM");

        let key_pem = ca.key_pem();
        let key_path = write(&dir, "cut.key", &key_pem.as_bytes()[..key_pem.len() / 2]);
        assert_err_names(
            load_private_key(&key_path).unwrap_err(),
            &key_path,
            "invalid PEM",
        );
    }

    #[test]
    fn well_formed_pem_with_bad_contents() {
        let dir = TempDir::new();
        let bogus = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        let path = write(&dir, "bogus.crt", bogus.as_bytes());
        assert_err_names(
            load_cert_chain(&path).unwrap_err(),
            &path,
            "certificate #1 is not valid X.509",
        );
        let bogus_key = "-----BEGIN PRIVATE KEY-----\nAAECAwQF\n-----END PRIVATE KEY-----\n";
        let path = write(&dir, "bogus.key", bogus_key.as_bytes());
        assert_err_names(
            load_private_key(&path).unwrap_err(),
            &path,
            "unsupported or malformed private key",
        );
    }

    #[test]
    fn encrypted_and_duplicate_keys_rejected() {
        let dir = TempDir::new();
        let enc = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAECAwQF\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let path = write(&dir, "enc.key", enc.as_bytes());
        assert_err_names(load_private_key(&path).unwrap_err(), &path, "encrypted");

        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let two = format!("{}{}", ca.key_pem(), ca.key_pem());
        let path = write(&dir, "two.key", two.as_bytes());
        assert_err_names(
            load_private_key(&path).unwrap_err(),
            &path,
            "more than one private key",
        );
    }

    #[test]
    fn mismatched_key_names_both_files() {
        let dir = crate::test_util::TempDir::new();
        let ca = crate::CertificateAuthority::generate(crate::issue::DEFAULT_CA_VALIDITY).unwrap();
        let a = ca
            .issue_client("a", crate::issue::DEFAULT_CERT_VALIDITY)
            .unwrap();
        let b = ca
            .issue_client("b", crate::issue::DEFAULT_CERT_VALIDITY)
            .unwrap();
        let (crt, key, other) = (
            dir.path().join("a.crt"),
            dir.path().join("a.key"),
            dir.path().join("b.key"),
        );
        std::fs::write(&crt, &a.cert_pem).unwrap();
        std::fs::write(&key, &a.key_pem).unwrap();
        std::fs::write(&other, &b.key_pem).unwrap();
        load_cert_and_key(&crt, &key).unwrap();
        let err = load_cert_and_key(&crt, &other).unwrap_err().to_string();
        assert!(
            err.contains("b.key") && err.contains("a.crt") && err.contains("does not match"),
            "{err}"
        );
    }
}
