//! Offline cross-checks for `check-config`: is a certificate inside its validity window,
//! and would the peer's CA accept it the way the TLS handshake will.
//!
//! The chain check runs rustls' own WebPKI verifiers (the ones the handshake uses), so a
//! certificate that passes here is one the peer accepts, and one that fails here is
//! refused for the same reason later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;

use crate::CertError;

/// How the peer verifies the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server certificate (EKU serverAuth), checked for one of its own names.
    Server,
    /// A TLS client certificate (EKU clientAuth).
    Client,
}

/// Why a certificate would be refused.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// `notAfter` is in the past.
    #[error("{path}: certificate expired at {not_after} (renew it, e.g. `tunnel-server certs agent --force`)")]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// Its `notAfter`, as written in the certificate.
        not_after: String,
    },
    /// `notBefore` is in the future (a clock problem, or a certificate from the future).
    #[error("{path}: certificate is not valid before {not_before} (check the clock)")]
    NotYetValid {
        /// The certificate file.
        path: PathBuf,
        /// Its `notBefore`.
        not_before: String,
    },
    /// The CA does not accept the certificate.
    #[error("{path}: not accepted by the CA in {ca}: {reason}")]
    WrongCa {
        /// The certificate file.
        path: PathBuf,
        /// The CA bundle it was checked against.
        ca: PathBuf,
        /// What the verifier said, e.g. "signed by an unknown CA".
        reason: String,
    },
    /// The file could not be parsed (see [`CertError`]).
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// Validity window and names of a certificate, for printing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Subject, e.g. `CN=system:node:edge-1, O=system:nodes`.
    pub subject: String,
    /// DNS and IP subject alternative names.
    pub sans: Vec<String>,
    /// `notBefore`, as written in the certificate.
    pub not_before: String,
    /// `notAfter`, as written in the certificate.
    pub not_after: String,
    /// `notAfter` as Unix seconds.
    pub not_after_unix: i64,
}

/// Reads the subject, SANs and validity of `cert` (from `path`, for errors).
pub fn summary(path: &Path, cert: &CertificateDer<'_>) -> Result<Summary, CertError> {
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| CertError::InvalidPem {
            path: path.to_path_buf(),
            reason: format!("not valid X.509: {e}"),
        })?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = x509.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(format!("DNS:{d}")),
                GeneralName::IPAddress(b) => sans.push(match ip_from_bytes(b) {
                    Some(ip) => format!("IP:{ip}"),
                    None => "IP:?".to_owned(),
                }),
                _ => {}
            }
        }
    }
    let v = x509.validity();
    Ok(Summary {
        subject: x509.subject().to_string(),
        sans,
        not_before: v.not_before.to_string(),
        not_after: v.not_after.to_string(),
        not_after_unix: v.not_after.timestamp(),
    })
}

/// Fails when `now` is outside the certificate's validity window.
pub fn check_validity(
    path: &Path,
    cert: &CertificateDer<'_>,
    now: UnixTime,
) -> Result<Summary, CheckError> {
    let s = summary(path, cert)?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let not_before = crate::not_before_unix(cert)?;
    if now > s.not_after_unix {
        return Err(CheckError::Expired {
            path: path.to_path_buf(),
            not_after: s.not_after,
        });
    }
    if now < not_before {
        return Err(CheckError::NotYetValid {
            path: path.to_path_buf(),
            not_before: s.not_before,
        });
    }
    Ok(s)
}

/// Checks that the CA bundle at `ca_path` accepts `chain` (leaf first) for `usage`,
/// exactly as the peer's TLS stack will. For [`Usage::Server`] the certificate is checked
/// for its own first SAN, so only the chain, the EKU and the validity count.
pub fn check_signed_by(
    path: &Path,
    chain: &[CertificateDer<'static>],
    ca_path: &Path,
    usage: Usage,
    now: UnixTime,
) -> Result<(), CheckError> {
    let roots = Arc::new(crate::load_root_store(ca_path)?);
    let wrong = |reason: String| CheckError::WrongCa {
        path: path.to_path_buf(),
        ca: ca_path.to_path_buf(),
        reason,
    };
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| CertError::InvalidPem {
        path: path.to_path_buf(),
        reason: "no certificate".into(),
    })?;
    let provider = crate::provider();
    let result = match usage {
        Usage::Client => {
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| wrong(e.to_string()))?
                .verify_client_cert(leaf, intermediates, now)
                .map(|_| ())
        }
        Usage::Server => {
            let name = first_server_name(path, leaf)?;
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| wrong(e.to_string()))?
                .verify_server_cert(leaf, intermediates, &name, &[], now)
                .map(|_| ())
        }
    };
    result.map_err(|e| wrong(describe(&e)))
}

/// The name a server certificate is checked for: its first DNS or IP SAN.
fn first_server_name(
    path: &Path,
    leaf: &CertificateDer<'_>,
) -> Result<ServerName<'static>, CheckError> {
    let s = summary(path, leaf)?;
    s.sans
        .iter()
        .find_map(|san| {
            let name = san
                .strip_prefix("DNS:")
                .or_else(|| san.strip_prefix("IP:"))?;
            ServerName::try_from(name.to_owned()).ok()
        })
        .ok_or_else(|| {
            CheckError::Cert(CertError::InvalidPem {
                path: path.to_path_buf(),
                reason: "server certificate has no DNS or IP subject alternative name".into(),
            })
        })
}

/// A rustls verification error in the words an operator needs.
fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "signed by a different CA (unknown issuer)".into()
        }
        // Every `certs init` CA has the same name, so another cluster's CA is found as
        // the issuer and only the signature tells them apart.
        rustls::Error::InvalidCertificate(C::BadSignature) => {
            "signed by a different CA with the same name (bad signature)".into()
        }
        rustls::Error::InvalidCertificate(C::InvalidPurpose)
        | rustls::Error::InvalidCertificate(C::InvalidPurposeContext { .. }) => {
            "wrong extended key usage for this role".into()
        }
        other => other.to_string(),
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{CertificateAuthority, DEFAULT_CA_VALIDITY, DEFAULT_CERT_VALIDITY};
    use crate::test_util::TempDir;
    use crate::NodeIdentity;
    use std::time::Duration;

    fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn der(pem: &str) -> Vec<CertificateDer<'static>> {
        vec![crate::load::first_cert_der(pem).unwrap()]
    }

    #[test]
    fn accepted_by_its_own_ca_and_refused_by_another() {
        let dir = TempDir::new();
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let other = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let ca_path = write(&dir, "ca.crt", ca.cert_pem());
        let other_path = write(&dir, "other.crt", other.cert_pem());
        let id = NodeIdentity::new("edge-1", vec!["10.0.0.1".parse().unwrap()]).unwrap();
        let agent = ca.issue_agent(&id, DEFAULT_CERT_VALIDITY).unwrap();
        let server = ca
            .issue_server("tunnel.example", &[], DEFAULT_CERT_VALIDITY)
            .unwrap();
        let now = UnixTime::now();
        let p = Path::new("agent.crt");
        check_signed_by(p, &der(&agent.cert_pem), &ca_path, Usage::Client, now).unwrap();
        check_signed_by(p, &der(&server.cert_pem), &ca_path, Usage::Server, now).unwrap();
        let err = check_signed_by(p, &der(&agent.cert_pem), &other_path, Usage::Client, now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("signed by a different CA"), "{err}");
        assert!(err.contains("other.crt"), "{err}");
        // A client certificate is not a server certificate.
        let err = check_signed_by(p, &der(&agent.cert_pem), &ca_path, Usage::Server, now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("extended key usage"), "{err}");
    }

    #[test]
    fn validity_window() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let id = NodeIdentity::new("edge-1", vec!["10.0.0.1".parse().unwrap()]).unwrap();
        let agent = ca.issue_agent(&id, Duration::from_secs(3600)).unwrap();
        let cert = &der(&agent.cert_pem)[0];
        let p = Path::new("a.crt");
        let s = check_validity(p, cert, UnixTime::now()).unwrap();
        assert!(s.subject.contains("system:node:edge-1"), "{s:?}");
        assert_eq!(s.sans, vec!["DNS:edge-1", "IP:10.0.0.1"]);
        let later = UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(s.not_after_unix).unwrap() + 1,
        ));
        let err = check_validity(p, cert, later).unwrap_err().to_string();
        assert!(err.starts_with("a.crt: certificate expired at "), "{err}");
        let err = check_validity(p, cert, UnixTime::since_unix_epoch(Duration::ZERO))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid before"), "{err}");
    }
}
