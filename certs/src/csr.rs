//! Certificate signing requests: the agent asks for a certificate without its key leaving it.
//!
//! The agent generates a P-256 key and a CSR naming `system:node:<name>` and its IPs; the
//! server checks the request against what it allows (a bootstrap token's node and IPs, or
//! the identity of the certificate being renewed) and signs exactly that identity.

use std::fmt;
use std::time::Duration;

use rcgen::{CertificateParams, CertificateSigningRequestParams, KeyPair};
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::identity::AGENT_CN_PREFIX;
use crate::issue::{CertificateAuthority, NODES_ORGANIZATION};
use crate::node::{validate_node_name, NodeIdentity};
use crate::CertError;

/// Largest CSR PEM accepted (a P-256 CSR with a few SANs is well under 1 KiB).
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;

/// A freshly generated agent key and the CSR that asks for its certificate.
pub struct AgentKeyRequest {
    /// The CSR (`BEGIN CERTIFICATE REQUEST`), sent to the server.
    pub csr_pem: String,
    /// The PKCS#8 private key, written locally with mode 0600 and never sent.
    pub key_pem: String,
}

impl fmt::Debug for AgentKeyRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentKeyRequest")
            .field("csr_pem", &self.csr_pem)
            .field("key_pem", &"[secret key elided]")
            .finish()
    }
}

/// Generates a P-256 key and a CSR for `identity` (CN `system:node:<name>`, IP SANs).
pub fn agent_key_request(identity: &NodeIdentity) -> Result<AgentKeyRequest, CertError> {
    const WHAT: &str = "certificate signing request";
    validate_node_name(&identity.node_name)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| CertError::Issue { what: WHAT, source })?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("{AGENT_CN_PREFIX}{}", identity.node_name),
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, NODES_ORGANIZATION);
    params.subject_alt_names = identity
        .node_ips
        .iter()
        .map(|ip| rcgen::SanType::IpAddress(*ip))
        .collect();
    let csr = params
        .serialize_request(&key)
        .map_err(|source| CertError::Issue { what: WHAT, source })?;
    let csr_pem = csr
        .pem()
        .map_err(|source| CertError::Issue { what: WHAT, source })?;
    Ok(AgentKeyRequest {
        csr_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Reads the node identity a CSR asks for (CN `system:node:<name>`, IP SANs).
///
/// Only parses; the signature is checked by [`CertificateAuthority::sign_agent_csr`].
pub fn csr_identity(csr_pem: &str) -> Result<NodeIdentity, CertError> {
    let invalid = |reason: String| CertError::InvalidCsr { reason };
    if csr_pem.len() > MAX_CSR_PEM_LEN {
        return Err(invalid(format!(
            "{} bytes is more than the {MAX_CSR_PEM_LEN} accepted",
            csr_pem.len()
        )));
    }
    let der = pem_der(csr_pem)?;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| invalid(format!("not a PKCS#10 request: {e}")))?;
    let subject = &csr.certification_request_info.subject;
    let mut cns = subject.iter_common_name();
    let cn = match (cns.next(), cns.next()) {
        (Some(cn), None) => cn
            .as_str()
            .map_err(|e| invalid(format!("common name is not a string: {e}")))?,
        (None, _) => return Err(invalid("subject has no common name".into())),
        (Some(_), Some(_)) => return Err(invalid("subject has more than one common name".into())),
    };
    let node_name = cn.strip_prefix(AGENT_CN_PREFIX).ok_or_else(|| {
        invalid(format!(
            "common name {cn:?} does not start with {AGENT_CN_PREFIX:?}"
        ))
    })?;
    validate_node_name(node_name)?;
    let mut node_ips = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                if let GeneralName::IPAddress(bytes) = name {
                    node_ips.push(crate::identity::ip_from_bytes(bytes)?);
                }
            }
        }
    }
    Ok(NodeIdentity {
        node_name: node_name.to_owned(),
        node_ips,
    })
}

/// Refuses a request for anything but `allowed`: another node name, or an IP it does not have.
///
/// The certificate is then issued for `allowed` exactly, whatever subset of IPs was asked.
pub fn check_requested_identity(
    requested: &NodeIdentity,
    allowed: &NodeIdentity,
) -> Result<(), CertError> {
    if requested.node_name != allowed.node_name {
        return Err(CertError::CsrNotAllowed {
            reason: format!(
                "the request is for node {:?} but this credential is for node {:?}",
                requested.node_name, allowed.node_name
            ),
        });
    }
    if let Some(ip) = requested
        .node_ips
        .iter()
        .find(|ip| !allowed.node_ips.contains(ip))
    {
        return Err(CertError::CsrNotAllowed {
            reason: format!(
                "the request names IP {ip}, which node {:?} may not use",
                allowed.node_name
            ),
        });
    }
    Ok(())
}

impl CertificateAuthority {
    /// Verifies `csr_pem` (signature, identity within `allowed`) and signs a certificate for
    /// `allowed` over the CSR's public key; returns the certificate PEM.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        allowed: &NodeIdentity,
        validity: Duration,
        not_before_floor: Option<OffsetDateTime>,
    ) -> Result<String, CertError> {
        let requested = csr_identity(csr_pem)?;
        check_requested_identity(&requested, allowed)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            CertError::InvalidCsr {
                reason: format!("signature or encoding rejected: {e}"),
            }
        })?;
        self.sign_agent_key(allowed, &csr.public_key, validity, not_before_floor)
    }
}

/// The DER inside a `CERTIFICATE REQUEST` PEM block.
fn pem_der(csr_pem: &str) -> Result<Vec<u8>, CertError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| CertError::InvalidCsr {
            reason: format!("no CERTIFICATE REQUEST PEM block: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::DEFAULT_CA_VALIDITY;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    fn id(node: &str, ips: &[&str]) -> NodeIdentity {
        NodeIdentity::new(node, ips.iter().map(|s| s.parse().unwrap()).collect()).unwrap()
    }

    #[test]
    fn csr_round_trips_identity_and_signed_cert_uses_the_agents_key() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let want = id("edge-1", &["10.0.0.1", "fd00::1"]);
        let req = agent_key_request(&want).unwrap();
        assert_eq!(csr_identity(&req.csr_pem).unwrap(), want);
        let pem = ca
            .sign_agent_csr(&req.csr_pem, &want, Duration::from_secs(30), None)
            .unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(crate::agent_identity(&der).unwrap(), want);
        // The certificate and the locally kept key form a usable pair.
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(req.key_pem.as_bytes()).unwrap();
        crate::load::check_key_matches(&[der], &key).unwrap();
    }

    #[test]
    fn a_subset_of_ips_gets_everything_the_credential_allows() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let allowed = id("edge-1", &["10.0.0.1", "10.0.0.2"]);
        let req = agent_key_request(&id("edge-1", &["10.0.0.2"])).unwrap();
        let pem = ca
            .sign_agent_csr(&req.csr_pem, &allowed, Duration::from_secs(60), None)
            .unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(crate::agent_identity(&der).unwrap(), allowed);
    }

    #[test]
    fn another_node_or_a_foreign_ip_is_refused() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let allowed = id("edge-a", &["10.0.0.1"]);
        let other = agent_key_request(&id("edge-b", &["10.0.0.1"])).unwrap();
        let err = ca
            .sign_agent_csr(&other.csr_pem, &allowed, Duration::from_secs(60), None)
            .unwrap_err();
        assert!(
            err.to_string().contains("\"edge-b\"") && err.to_string().contains("\"edge-a\""),
            "{err}"
        );
        let foreign = agent_key_request(&id("edge-a", &["10.9.9.9"])).unwrap();
        let err = ca
            .sign_agent_csr(&foreign.csr_pem, &allowed, Duration::from_secs(60), None)
            .unwrap_err();
        assert!(err.to_string().contains("10.9.9.9"), "{err}");
    }

    #[test]
    fn garbage_and_oversized_requests_are_invalid() {
        for bad in [
            "garbage".to_string(),
            "x".repeat(MAX_CSR_PEM_LEN + 1),
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
                .to_string(),
        ] {
            assert!(
                matches!(csr_identity(&bad), Err(CertError::InvalidCsr { .. })),
                "{bad:.40}"
            );
        }
    }

    #[test]
    fn not_before_floor_lifts_the_backdated_start() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let who = id("edge-1", &[]);
        let req = agent_key_request(&who).unwrap();
        let floor = OffsetDateTime::now_utc() + time::Duration::seconds(2);
        let pem = ca
            .sign_agent_csr(&req.csr_pem, &who, Duration::from_secs(3600), Some(floor))
            .unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            x509.validity().not_before.timestamp(),
            floor.unix_timestamp()
        );
    }
}
