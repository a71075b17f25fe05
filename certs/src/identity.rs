//! Reading identity facts out of a peer's certificate (after TLS has verified it).

use std::net::IpAddr;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use crate::node::{validate_node_name, NodeIdentity};
use crate::CertError;

/// Prefix of an agent certificate's CN, as in kubelet client certificates.
pub const AGENT_CN_PREFIX: &str = "system:node:";

/// Extracts the node identity from a (verified) agent certificate.
///
/// The node name comes from CN `system:node:<name>`; `node_ips` are the IP SANs in order.
pub fn agent_identity(cert: &CertificateDer<'_>) -> Result<NodeIdentity, CertError> {
    let x509 = parse(cert)?;
    let not_agent = |reason: String| CertError::NotAnAgentCertificate { reason };
    let cn =
        single_common_name(&x509)?.ok_or_else(|| not_agent("subject has no common name".into()))?;
    let node_name = cn.strip_prefix(AGENT_CN_PREFIX).ok_or_else(|| {
        not_agent(format!(
            "common name {cn:?} does not start with {AGENT_CN_PREFIX:?}"
        ))
    })?;
    validate_node_name(node_name).map_err(|e| not_agent(e.to_string()))?;
    let node_ips = ip_sans(&x509)?;
    Ok(NodeIdentity {
        node_name: node_name.to_owned(),
        node_ips,
    })
}

/// Returns the subject's common name, if any, e.g. to authorise the proxy client.
///
/// A subject with several CNs is rejected rather than guessing which one counts.
pub fn common_name(cert: &CertificateDer<'_>) -> Result<Option<String>, CertError> {
    single_common_name(&parse(cert)?)
}

/// The subject's organizations (O), in order: the groups kube-apiserver gives the holder.
pub fn organizations(cert: &CertificateDer<'_>) -> Result<Vec<String>, CertError> {
    Ok(parse(cert)?
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect())
}

/// True when `cert` is an agent (kubelet-style node) certificate: subject
/// `O=system:nodes` or a CN starting with `system:node:`, whatever CA signed it.
///
/// Front ends refuse such certificates as client credentials, so a node's key
/// never reaches another node's services.
pub fn is_agent_certificate(cert: &CertificateDer<'_>) -> Result<bool, CertError> {
    let x509 = parse(cert)?;
    let in_nodes_group = x509.subject().iter_organization().any(|o| {
        o.as_str()
            .is_ok_and(|o| o == crate::issue::NODES_ORGANIZATION)
    });
    let node_cn = x509
        .subject()
        .iter_common_name()
        .any(|cn| cn.as_str().is_ok_and(|cn| cn.starts_with(AGENT_CN_PREFIX)));
    Ok(in_nodes_group || node_cn)
}

/// True when `cert` may use a replica's peer path: a peer certificate
/// (`certs init` writes `peer.crt`: subject `O=edgetunnel:replicas`) that is
/// not also an agent certificate. Only the CA check is left to TLS.
pub fn is_peer_certificate(cert: &CertificateDer<'_>) -> Result<bool, CertError> {
    let x509 = parse(cert)?;
    let in_replicas = x509.subject().iter_organization().any(|o| {
        o.as_str()
            .is_ok_and(|o| o == crate::issue::PEERS_ORGANIZATION)
    });
    Ok(in_replicas && !is_agent_certificate(cert)?)
}

/// Returns the certificate's `notAfter` as Unix seconds, for expiry metrics and warnings.
pub fn not_after_unix(cert: &CertificateDer<'_>) -> Result<i64, CertError> {
    Ok(parse(cert)?.validity().not_after.timestamp())
}

/// Returns the certificate's `notBefore` as Unix seconds, for revocation checks.
pub fn not_before_unix(cert: &CertificateDer<'_>) -> Result<i64, CertError> {
    Ok(parse(cert)?.validity().not_before.timestamp())
}

/// Parses DER as X.509, rejecting trailing bytes.
fn parse<'a>(cert: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, CertError> {
    let (rest, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| CertError::InvalidCertificate {
            reason: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(CertError::InvalidCertificate {
            reason: format!("{} trailing bytes after the certificate", rest.len()),
        });
    }
    Ok(x509)
}

/// The subject CN as text; `None` if absent, an error if repeated or not a string.
fn single_common_name(x509: &X509Certificate<'_>) -> Result<Option<String>, CertError> {
    let mut cns = x509.subject().iter_common_name();
    let Some(first) = cns.next() else {
        return Ok(None);
    };
    if cns.next().is_some() {
        return Err(CertError::InvalidCertificate {
            reason: "subject has more than one common name".into(),
        });
    }
    let cn = first.as_str().map_err(|e| CertError::InvalidCertificate {
        reason: format!("common name is not a string: {e}"),
    })?;
    Ok(Some(cn.to_owned()))
}

/// All IP-address SANs, in certificate order.
fn ip_sans(x509: &X509Certificate<'_>) -> Result<Vec<IpAddr>, CertError> {
    let san = x509
        .subject_alternative_name()
        .map_err(|e| CertError::InvalidCertificate {
            reason: format!("bad subjectAltName extension: {e}"),
        })?;
    let Some(san) = san else {
        return Ok(Vec::new());
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::IPAddress(bytes) => Some(ip_from_bytes(bytes)),
            _ => None,
        })
        .collect()
}

/// Converts an IP SAN's octets (4 or 16 of them) to an address.
pub(crate) fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, CertError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::from(v4))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::from(v6))
    } else {
        Err(CertError::InvalidCertificate {
            reason: format!("IP SAN has {} octets (expected 4 or 16)", bytes.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{CertificateAuthority, DEFAULT_CA_VALIDITY, DEFAULT_CERT_VALIDITY};
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};
    use rustls_pki_types::pem::PemObject;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn self_signed(params: CertificateParams) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn extracts_name_and_ips_in_order() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let identity = NodeIdentity {
            node_name: "worker-7.edge.example".into(),
            node_ips: vec![
                "2001:db8::7".parse().unwrap(),
                "192.168.7.7".parse().unwrap(),
                "10.7.0.1".parse().unwrap(),
            ],
        };
        let issued = ca.issue_agent(&identity, DEFAULT_CERT_VALIDITY).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(agent_identity(&der).unwrap(), identity);
    }

    #[test]
    fn agent_without_ips_has_empty_ip_list() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let identity = NodeIdentity::new("n1", vec![]).unwrap();
        let issued = ca.issue_agent(&identity, DEFAULT_CERT_VALIDITY).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(agent_identity(&der).unwrap(), identity);
    }

    #[test]
    fn only_peer_certificates_are_peers() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let peer = ca.issue_peer(DEFAULT_CERT_VALIDITY).unwrap();
        assert!(is_peer_certificate(&der(&peer.cert_pem)).unwrap());
        let server = ca
            .issue_server("tunnel", &[], DEFAULT_CERT_VALIDITY)
            .unwrap();
        assert!(!is_peer_certificate(&der(&server.cert_pem)).unwrap());
        let identity = NodeIdentity::new("edge-1", vec![]).unwrap();
        let agent = ca.issue_agent(&identity, DEFAULT_CERT_VALIDITY).unwrap();
        assert!(!is_peer_certificate(&der(&agent.cert_pem)).unwrap());
        let client = ca
            .issue_client("kube-apiserver", DEFAULT_CERT_VALIDITY)
            .unwrap();
        assert!(!is_peer_certificate(&der(&client.cert_pem)).unwrap());
    }

    #[test]
    fn cn_without_prefix_rejected() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let issued = ca.issue_client("edge-1", DEFAULT_CERT_VALIDITY).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let err = agent_identity(&der).unwrap_err();
        assert!(
            matches!(&err, CertError::NotAnAgentCertificate { reason } if reason.contains("system:node:")),
            "{err}"
        );
    }

    #[test]
    fn agent_certificates_are_recognised_by_group_or_cn() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let identity = NodeIdentity::new("edge-2", vec![]).unwrap();
        let agent = ca.issue_agent(&identity, DEFAULT_CERT_VALIDITY).unwrap();
        let der = CertificateDer::from_pem_slice(agent.cert_pem.as_bytes()).unwrap();
        assert!(is_agent_certificate(&der).unwrap());
        let client = ca.issue_client("kube-apiserver-proxy-client", DEFAULT_CERT_VALIDITY);
        let der = CertificateDer::from_pem_slice(client.unwrap().cert_pem.as_bytes()).unwrap();
        assert!(!is_agent_certificate(&der).unwrap());
        // Only the group, only the CN prefix: either one marks a node certificate.
        for (cn, org) in [("someone", "system:nodes"), ("system:node:x", "other")] {
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, cn);
            params
                .distinguished_name
                .push(DnType::OrganizationName, org);
            assert!(is_agent_certificate(&self_signed(params)).unwrap(), "{cn}");
        }
    }

    #[test]
    fn missing_cn_rejected() {
        let mut params = CertificateParams::new(vec!["edge-1".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let der = self_signed(params);
        assert_eq!(common_name(&der).unwrap(), None);
        assert!(matches!(
            agent_identity(&der),
            Err(CertError::NotAnAgentCertificate { .. })
        ));
    }

    #[test]
    fn invalid_node_name_in_cn_rejected() {
        for cn in ["system:node:", "system:node:Bad_Name", "system:node:../x"] {
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, cn);
            let der = self_signed(params);
            assert!(
                matches!(
                    agent_identity(&der),
                    Err(CertError::NotAnAgentCertificate { .. })
                ),
                "{cn}"
            );
        }
    }

    #[test]
    fn non_ip_sans_are_ignored() {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "system:node:n2");
        params.subject_alt_names = vec![
            SanType::DnsName("n2".try_into().unwrap()),
            SanType::IpAddress("10.0.0.2".parse().unwrap()),
            SanType::URI("spiffe://x/y".try_into().unwrap()),
            SanType::IpAddress("::2".parse().unwrap()),
        ];
        let id = agent_identity(&self_signed(params)).unwrap();
        assert_eq!(id.node_name, "n2");
        assert_eq!(
            id.node_ips,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "::2".parse().unwrap()
            ]
        );
    }

    #[test]
    fn not_after_matches_requested_validity() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let issued = ca.issue_client("c", DEFAULT_CERT_VALIDITY).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let expected = now + DEFAULT_CERT_VALIDITY.as_secs() as i64;
        let got = not_after_unix(&der).unwrap();
        assert!((got - expected).abs() < 60, "{got} vs {expected}");
    }

    #[test]
    fn garbage_der_is_an_error() {
        let der = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            common_name(&der),
            Err(CertError::InvalidCertificate { .. })
        ));
        assert!(not_after_unix(&der).is_err());
        assert!(agent_identity(&der).is_err());
    }
}
