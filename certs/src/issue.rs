//! Issuing certificates: a self-signed CA and the server, agent and proxy-client leaves it signs.
//!
//! Every key is ECDSA P-256 (fast handshakes); subjects follow Kubernetes conventions.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;

use crate::identity::AGENT_CN_PREFIX;
use crate::load::{load_cert_chain, load_private_key};
use crate::node::{validate_node_name, NodeIdentity};
use crate::CertError;

/// Default lifetime of a generated CA (10 years), long because rotating it touches every node.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Default lifetime of server, agent and client certificates (1 year), like kubeadm's.
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Common name of a generated CA, so operators can recognise it in `openssl x509` output.
pub const CA_COMMON_NAME: &str = "edgetunnel-ca";
/// Default common name of the certificate kube-apiserver presents to the proxy listener.
pub const DEFAULT_PROXY_CLIENT_CN: &str = "kube-apiserver-proxy-client";
/// Organization of agent certificates: the kubelet client-certificate group.
pub const NODES_ORGANIZATION: &str = "system:nodes";
/// Organization of a replica's peer certificate: what the peer path accepts.
pub const PEERS_ORGANIZATION: &str = "edgetunnel:replicas";
/// Common name of a replica's peer certificate.
pub const PEER_COMMON_NAME: &str = "edgetunnel-replica";

/// How far `notBefore` is backdated so a node with a slightly slow clock accepts a fresh cert
/// (at most a tenth of the validity, so short-lived certificates keep most of their life).
const CLOCK_SKEW_ALLOWANCE: time::Duration = time::Duration::minutes(5);
/// Random serial length in bytes (RFC 5280 allows up to 20).
const SERIAL_LEN: usize = 16;

/// A certificate and its private key, both PEM-encoded, ready to be written to disk.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate (`BEGIN CERTIFICATE`).
    pub cert_pem: String,
    /// The PKCS#8 private key (`BEGIN PRIVATE KEY`).
    pub key_pem: String,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret key elided]")
            .finish()
    }
}

/// A CA certificate plus its signing key: the root of trust for the server and all agents.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("not_after", &self.not_after)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new self-signed CA (CN `edgetunnel-ca`, P-256) valid for `validity`.
    pub fn generate(validity: Duration) -> Result<Self, CertError> {
        const WHAT: &str = "CA certificate";
        let key = new_key(WHAT)?;
        let (not_before, not_after) = validity_window(validity, None)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(CA_COMMON_NAME);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertError::Issue { what: WHAT, source })?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA from PEM text (the first certificate, and a PKCS#8 key).
    ///
    /// Fails if the certificate is not a CA or the key does not belong to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            CertError::InvalidCa {
                reason: format!("no usable certificate in CA certificate PEM: {e}"),
            }
        })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            CertError::InvalidCa {
                reason: format!("no usable private key in CA key PEM: {e}"),
            }
        })?;
        Self::from_der(cert, &key).map_err(|problem| CertError::InvalidCa {
            reason: match problem {
                CaProblem::Cert(r) => format!("CA certificate: {r}"),
                CaProblem::Key(r) => format!("CA key: {r}"),
                CaProblem::Mismatch => "CA private key does not match the CA certificate".into(),
            },
        })
    }

    /// Loads an existing CA from a certificate file and a PKCS#8 key file (`ca.crt`, `ca.key`).
    ///
    /// Unlike [`Self::from_pem`], errors name the offending file.
    pub fn from_files(cert_path: &Path, key_path: &Path) -> Result<Self, CertError> {
        // The first certificate is the CA itself; any others in the file are ignored.
        let cert = load_cert_chain(cert_path)?
            .into_iter()
            .next()
            .ok_or_else(|| CertError::InvalidPem {
                path: cert_path.to_path_buf(),
                reason: "no certificate found in PEM".into(),
            })?;
        let key = load_private_key(key_path)?;
        Self::from_der(cert, &key).map_err(|problem| match problem {
            CaProblem::Cert(reason) => CertError::InvalidPem {
                path: cert_path.to_path_buf(),
                reason,
            },
            CaProblem::Key(reason) => CertError::InvalidPem {
                path: key_path.to_path_buf(),
                reason,
            },
            CaProblem::Mismatch => CertError::InvalidPem {
                path: key_path.to_path_buf(),
                reason: format!(
                    "private key does not match the CA certificate in {}",
                    cert_path.display()
                ),
            },
        })
    }

    /// Builds a CA from its DER certificate and key, checking it really is a usable CA.
    fn from_der(
        cert_der: CertificateDer<'static>,
        key: &PrivateKeyDer<'_>,
    ) -> Result<Self, CaProblem> {
        let PrivateKeyDer::Pkcs8(pkcs8) = key else {
            return Err(CaProblem::Key(
                "CA key must be PKCS#8 (\"BEGIN PRIVATE KEY\"); convert it with \
                 `openssl pkcs8 -topk8 -nocrypt`"
                    .into(),
            ));
        };
        let key = KeyPair::try_from(pkcs8)
            .map_err(|e| CaProblem::Key(format!("not a supported signing key: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| CaProblem::Cert(format!("not valid X.509: {e}")))?;
        if !x509.is_ca() {
            return Err(CaProblem::Cert(
                "certificate is not a CA (basicConstraints CA:TRUE missing)".into(),
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaProblem::Mismatch);
        }
        let not_after = x509.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| CaProblem::Cert(format!("cannot be used for signing: {e}")))?;
        Ok(Self {
            cert_pem: crate::pem::encode("CERTIFICATE", &cert_der),
            cert_der,
            not_after,
            issuer,
        })
    }

    /// The CA certificate as PEM, for `ca.crt` and for peers' trust stores.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate as DER, for building an in-memory `RootCertStore`.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key as PKCS#8 PEM, for `ca.key`.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues the tunnel server's certificate (EKU serverAuth).
    ///
    /// CN is `server_name`; SANs are `server_name` (as DNS, or as IP if it parses as one) and
    /// every address in `ips`.
    pub fn issue_server(
        &self,
        server_name: &str,
        ips: &[IpAddr],
        validity: Duration,
    ) -> Result<IssuedCert, CertError> {
        let name = ServerName::try_from(server_name).map_err(|e| CertError::InvalidServerName {
            name: server_name.to_owned(),
            reason: e.to_string(),
        })?;
        let mut sans = Vec::with_capacity(ips.len() + 1);
        match name {
            ServerName::IpAddress(ip) => sans.push(SanType::IpAddress(IpAddr::from(ip))),
            _ => sans.push(SanType::DnsName(server_name.try_into().map_err(
                |e: rcgen::Error| CertError::InvalidServerName {
                    name: server_name.to_owned(),
                    reason: e.to_string(),
                },
            )?)),
        }
        push_ip_sans(&mut sans, ips);
        self.issue_server_leaf(server_name, sans, validity)
    }

    /// Like [`Self::issue_server`], with `extra_names` as further DNS SANs
    /// (a kubelet serving `<node>` and `<node>.<domain>`).
    pub fn issue_server_names(
        &self,
        server_name: &str,
        extra_names: &[String],
        ips: &[IpAddr],
        validity: Duration,
    ) -> Result<IssuedCert, CertError> {
        let mut cert_names = vec![server_name.to_owned()];
        cert_names.extend(extra_names.iter().cloned());
        let mut sans = Vec::with_capacity(cert_names.len() + ips.len());
        for name in &cert_names {
            sans.push(SanType::DnsName(name.as_str().try_into().map_err(
                |e: rcgen::Error| CertError::InvalidServerName {
                    name: name.clone(),
                    reason: e.to_string(),
                },
            )?));
        }
        push_ip_sans(&mut sans, ips);
        self.issue_server_leaf(server_name, sans, validity)
    }

    fn issue_server_leaf(
        &self,
        server_name: &str,
        sans: Vec<SanType>,
        validity: Duration,
    ) -> Result<IssuedCert, CertError> {
        self.issue_leaf(
            "server certificate",
            common_name_dn(server_name),
            sans,
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            validity,
        )
    }

    /// Issues an edge agent's client certificate (EKU clientAuth).
    ///
    /// Subject is `CN=system:node:<node>, O=system:nodes` like a kubelet client cert; SANs are
    /// `DNS:<node>` plus each node IP.
    pub fn issue_agent(
        &self,
        identity: &NodeIdentity,
        validity: Duration,
    ) -> Result<IssuedCert, CertError> {
        let (dn, sans) = agent_subject(identity)?;
        self.issue_leaf(
            AGENT_CERT,
            dn,
            sans,
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            validity,
        )
    }

    /// Issues the client certificate replicas show each other on the peer
    /// path (EKU clientAuth, `CN=edgetunnel-replica, O=edgetunnel:replicas`).
    pub fn issue_peer(&self, validity: Duration) -> Result<IssuedCert, CertError> {
        let mut dn = common_name_dn(PEER_COMMON_NAME);
        dn.push(DnType::OrganizationName, PEERS_ORGANIZATION);
        self.issue_leaf(
            "peer certificate",
            dn,
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            validity,
        )
    }

    /// Issues a plain client certificate (EKU clientAuth, no SANs), e.g. for kube-apiserver.
    pub fn issue_client(
        &self,
        common_name: &str,
        validity: Duration,
    ) -> Result<IssuedCert, CertError> {
        let invalid = |reason: &str| CertError::InvalidCommonName {
            name: common_name.to_owned(),
            reason: reason.to_owned(),
        };
        if common_name.trim().is_empty() {
            return Err(invalid("must not be empty"));
        }
        if common_name.chars().any(char::is_control) {
            return Err(invalid("must not contain control characters"));
        }
        self.issue_leaf(
            "client certificate",
            common_name_dn(common_name),
            Vec::new(),
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            validity,
        )
    }

    /// Signs a fresh P-256 leaf with the given subject, SANs and single EKU.
    fn issue_leaf(
        &self,
        what: &'static str,
        subject: DistinguishedName,
        sans: Vec<SanType>,
        ekus: Vec<ExtendedKeyUsagePurpose>,
        validity: Duration,
    ) -> Result<IssuedCert, CertError> {
        let key = new_key(what)?;
        let leaf = LeafSpec {
            what,
            subject,
            sans,
            ekus,
            validity,
            not_before_floor: None,
        };
        Ok(IssuedCert {
            cert_pem: self.sign_leaf(leaf, &key)?,
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent certificate for `identity` over a public key the agent generated
    /// (from its CSR); returns the certificate PEM.
    ///
    /// `not_before_floor` lifts `notBefore` above a revocation time, so the new certificate
    /// is told apart from the revoked ones even though `notBefore` is backdated for skew.
    pub(crate) fn sign_agent_key(
        &self,
        identity: &NodeIdentity,
        subject_key: &impl PublicKeyData,
        validity: Duration,
        not_before_floor: Option<OffsetDateTime>,
    ) -> Result<String, CertError> {
        let (subject, sans) = agent_subject(identity)?;
        let leaf = LeafSpec {
            what: AGENT_CERT,
            subject,
            sans,
            ekus: vec![ExtendedKeyUsagePurpose::ClientAuth],
            validity,
            not_before_floor,
        };
        self.sign_leaf(leaf, subject_key)
    }

    /// Signs `leaf` for `subject_key` with the CA key; returns the certificate PEM.
    fn sign_leaf(
        &self,
        leaf: LeafSpec,
        subject_key: &impl PublicKeyData,
    ) -> Result<String, CertError> {
        let (mut not_before, not_after) = validity_window(leaf.validity, Some(self.not_after))?;
        if let Some(floor) = leaf.not_before_floor {
            not_before = not_before.max(floor).min(not_after);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = leaf.subject;
        params.subject_alt_names = leaf.sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = leaf.ekus;
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .signed_by(subject_key, &self.issuer)
            .map_err(|source| CertError::Issue {
                what: leaf.what,
                source,
            })?;
        Ok(cert.pem())
    }
}

/// What [`CertificateAuthority::sign_leaf`] puts in a leaf certificate.
struct LeafSpec {
    what: &'static str,
    subject: DistinguishedName,
    sans: Vec<SanType>,
    ekus: Vec<ExtendedKeyUsagePurpose>,
    validity: Duration,
    not_before_floor: Option<OffsetDateTime>,
}

/// What the issuing errors call an agent certificate.
const AGENT_CERT: &str = "agent certificate";

/// Subject `CN=system:node:<node>, O=system:nodes` and SANs `DNS:<node>` plus each node IP.
fn agent_subject(identity: &NodeIdentity) -> Result<(DistinguishedName, Vec<SanType>), CertError> {
    validate_node_name(&identity.node_name)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, NODES_ORGANIZATION);
    dn.push(
        DnType::CommonName,
        format!("{AGENT_CN_PREFIX}{}", identity.node_name),
    );
    let dns = identity
        .node_name
        .as_str()
        .try_into()
        .map_err(|source| CertError::Issue {
            what: AGENT_CERT,
            source,
        })?;
    let mut sans = vec![SanType::DnsName(dns)];
    push_ip_sans(&mut sans, &identity.node_ips);
    Ok((dn, sans))
}

/// Why a certificate/key pair cannot serve as a CA; mapped to an error naming PEM or file.
enum CaProblem {
    /// The certificate is unusable.
    Cert(String),
    /// The key is unusable.
    Key(String),
    /// The key does not belong to the certificate.
    Mismatch,
}

/// Generates an ECDSA P-256 key pair.
fn new_key(what: &'static str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| CertError::Issue { what, source })
}

/// A distinguished name holding only a common name.
fn common_name_dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Appends an IP SAN for each address not already present.
fn push_ip_sans(sans: &mut Vec<SanType>, ips: &[IpAddr]) {
    for ip in ips {
        let san = SanType::IpAddress(*ip);
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
}

/// Computes `(notBefore, notAfter)` for a certificate valid from now for `validity`.
///
/// `notBefore` is backdated for clock skew; `notAfter` is capped at `cap` (the CA's own
/// expiry), since a leaf outliving its CA would only fail later in a more confusing way.
fn validity_window(
    validity: Duration,
    cap: Option<OffsetDateTime>,
) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    let invalid = |reason: &str| CertError::InvalidValidity {
        validity,
        reason: reason.to_owned(),
    };
    if validity < Duration::from_secs(1) {
        return Err(invalid("must be at least one second"));
    }
    let span = time::Duration::try_from(validity).map_err(|_| invalid("too long"))?;
    let now = OffsetDateTime::now_utc();
    let mut not_after = now
        .checked_add(span)
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| invalid("would end after the year 9999"))?;
    if let Some(cap) = cap {
        if cap <= now {
            return Err(invalid("the CA certificate has already expired"));
        }
        if not_after > cap {
            tracing::warn!(
                requested_not_after = %not_after,
                ca_not_after = %cap,
                "certificate validity capped at the CA's expiry"
            );
            not_after = cap;
        }
    }
    let skew = CLOCK_SKEW_ALLOWANCE.min(span / 10);
    Ok((now - skew, not_after))
}

/// A random positive serial number, drawn from the crypto provider's CSPRNG.
fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; SERIAL_LEN];
    crate::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CertError::Issue {
            what: "serial number",
            source: rcgen::Error::RingUnspecified,
        })?;
    // Clear the sign bit (serials are positive) and set the next one so the length is fixed.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{agent_identity, common_name};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::X509Certificate;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn parse<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
        x509_parser::parse_x509_certificate(der).unwrap().1
    }

    fn eku(cert: &X509Certificate<'_>) -> (bool, bool) {
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        (eku.server_auth, eku.client_auth)
    }

    fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
        let Some(ext) = cert.subject_alternative_name().unwrap() else {
            return Vec::new();
        };
        ext.value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(b) => format!("IP:{b:?}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn generated_ca_follows_conventions() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let der = der(ca.cert_pem());
        assert_eq!(&der, ca.cert_der());
        let cert = parse(&der);
        assert!(cert.is_ca());
        assert_eq!(common_name(&der).unwrap().as_deref(), Some(CA_COMMON_NAME));
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign());
        let years = (cert.validity().not_after.timestamp()
            - cert.validity().not_before.timestamp())
            / (365 * 24 * 3600);
        assert_eq!(years, 10);
        assert!(ca.key_pem().contains("BEGIN PRIVATE KEY"));
        assert!(cert
            .public_key()
            .algorithm
            .algorithm
            .to_id_string()
            .starts_with("1.2.840.10045.2.1")); // id-ecPublicKey
    }

    #[test]
    fn server_cert_has_dns_and_ip_sans_and_server_auth() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let ips = [
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        let issued = ca
            .issue_server("tunnel.example.com", &ips, DEFAULT_CERT_VALIDITY)
            .unwrap();
        let der = der(&issued.cert_pem);
        let cert = parse(&der);
        assert_eq!(
            common_name(&der).unwrap().as_deref(),
            Some("tunnel.example.com")
        );
        assert_eq!(
            sans(&cert),
            vec![
                "DNS:tunnel.example.com".to_string(),
                "IP:[10, 0, 0, 1]".to_string(),
                format!("IP:{:?}", Ipv6Addr::LOCALHOST.octets()),
            ]
        );
        assert_eq!(eku(&cert), (true, false));
        assert!(!cert.is_ca());
        assert!(issued.key_pem.contains("BEGIN PRIVATE KEY"));
    }

    #[test]
    fn server_name_that_is_an_ip_becomes_an_ip_san_only_once() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let issued = ca
            .issue_server("192.0.2.7", &[ip], DEFAULT_CERT_VALIDITY)
            .unwrap();
        let der = der(&issued.cert_pem);
        assert_eq!(sans(&parse(&der)), vec!["IP:[192, 0, 2, 7]".to_string()]);
    }

    #[test]
    fn invalid_server_name_rejected() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        for name in ["", "bad name", "a..b"] {
            assert!(
                matches!(
                    ca.issue_server(name, &[], DEFAULT_CERT_VALIDITY),
                    Err(CertError::InvalidServerName { .. })
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn agent_cert_follows_kubelet_convention() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let identity = NodeIdentity {
            node_name: "edge-1".into(),
            node_ips: vec![
                IpAddr::V4(Ipv4Addr::new(172, 16, 0, 9)),
                "fd00::9".parse().unwrap(),
            ],
        };
        let issued = ca.issue_agent(&identity, DEFAULT_CERT_VALIDITY).unwrap();
        let der = der(&issued.cert_pem);
        let cert = parse(&der);
        assert_eq!(
            common_name(&der).unwrap().as_deref(),
            Some("system:node:edge-1")
        );
        let orgs: Vec<_> = cert
            .subject()
            .iter_organization()
            .map(|o| o.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(orgs, vec![NODES_ORGANIZATION.to_string()]);
        assert_eq!(sans(&cert)[0], "DNS:edge-1");
        assert_eq!(eku(&cert), (false, true));
        assert_eq!(agent_identity(&der).unwrap(), identity);
        // Issued by our CA, with an authority key identifier.
        assert_eq!(cert.issuer(), parse(ca.cert_der()).subject());
        assert!(cert.extensions().iter().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )));
    }

    #[test]
    fn agent_with_invalid_node_name_rejected() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        for name in ["Edge", "edge_1", "", "-x", "../../etc/passwd"] {
            let identity = NodeIdentity {
                node_name: name.into(),
                node_ips: vec![],
            };
            assert!(
                matches!(
                    ca.issue_agent(&identity, DEFAULT_CERT_VALIDITY),
                    Err(CertError::InvalidNodeName { .. })
                ),
                "{name:?}"
            );
        }
    }

    #[test]
    fn peer_cert_is_a_client_cert_of_the_replicas_group() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let issued = ca.issue_peer(DEFAULT_CERT_VALIDITY).unwrap();
        let der = der(&issued.cert_pem);
        let cert = parse(&der);
        assert_eq!(eku(&cert), (false, true));
        let orgs: Vec<String> = cert
            .subject()
            .iter_organization()
            .map(|o| o.as_str().unwrap().to_string())
            .collect();
        assert_eq!(orgs, vec![PEERS_ORGANIZATION.to_string()]);
        assert!(!crate::is_agent_certificate(&der).unwrap());
    }

    #[test]
    fn client_cert_has_client_auth_and_given_cn() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let issued = ca
            .issue_client(DEFAULT_PROXY_CLIENT_CN, DEFAULT_CERT_VALIDITY)
            .unwrap();
        let der = der(&issued.cert_pem);
        assert_eq!(
            common_name(&der).unwrap().as_deref(),
            Some(DEFAULT_PROXY_CLIENT_CN)
        );
        assert_eq!(eku(&parse(&der)), (false, true));
        assert!(matches!(
            ca.issue_client(" ", DEFAULT_CERT_VALIDITY),
            Err(CertError::InvalidCommonName { .. })
        ));
    }

    #[test]
    fn ca_round_trips_through_pem_and_keeps_signing() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let loaded = CertificateAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        let issued = loaded
            .issue_client("someone", DEFAULT_CERT_VALIDITY)
            .unwrap();
        let leaf = der(&issued.cert_pem);
        let leaf = parse(&leaf);
        let ca_cert = parse(ca.cert_der());
        assert_eq!(leaf.issuer(), ca_cert.subject());
        leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn from_pem_rejects_mismatched_key_non_ca_and_garbage() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let other = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let err = CertificateAuthority::from_pem(ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");

        let leaf = ca.issue_client("x", DEFAULT_CERT_VALIDITY).unwrap();
        let err = CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");

        let err = CertificateAuthority::from_pem("garbage", &ca.key_pem()).unwrap_err();
        assert!(matches!(err, CertError::InvalidCa { .. }), "{err}");
        let err = CertificateAuthority::from_pem(ca.cert_pem(), "garbage").unwrap_err();
        assert!(matches!(err, CertError::InvalidCa { .. }), "{err}");
    }

    #[test]
    fn leaf_validity_is_requested_span_but_capped_at_ca_expiry() {
        let ca = CertificateAuthority::generate(Duration::from_secs(30 * 24 * 3600)).unwrap();
        let issued = ca
            .issue_client("short", Duration::from_secs(24 * 3600))
            .unwrap();
        let leaf = der(&issued.cert_pem);
        let v = parse(&leaf).validity().clone();
        let span = v.not_after.timestamp() - v.not_before.timestamp();
        assert_eq!(span, 24 * 3600 + 5 * 60);

        let issued = ca.issue_client("long", DEFAULT_CERT_VALIDITY).unwrap();
        let leaf = der(&issued.cert_pem);
        assert_eq!(
            parse(&leaf).validity().not_after.timestamp(),
            parse(ca.cert_der()).validity().not_after.timestamp()
        );
    }

    #[test]
    fn zero_validity_rejected() {
        assert!(matches!(
            CertificateAuthority::generate(Duration::ZERO),
            Err(CertError::InvalidValidity { .. })
        ));
        assert!(matches!(
            CertificateAuthority::generate(Duration::from_secs(u64::MAX)),
            Err(CertError::InvalidValidity { .. })
        ));
    }

    #[test]
    fn serials_are_unique_and_positive() {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let a = ca.issue_client("a", DEFAULT_CERT_VALIDITY).unwrap();
        let b = ca.issue_client("a", DEFAULT_CERT_VALIDITY).unwrap();
        let (da, db) = (der(&a.cert_pem), der(&b.cert_pem));
        let (sa, sb) = (
            parse(&da).raw_serial().to_vec(),
            parse(&db).raw_serial().to_vec(),
        );
        assert_ne!(sa, sb);
        assert_eq!(sa.len(), SERIAL_LEN);
        assert!(sa[0] & 0x80 == 0);
    }
}
