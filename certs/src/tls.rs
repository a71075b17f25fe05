//! rustls configurations for the three TLS endpoints: agent-facing server, proxy server, agent.
//!
//! All use the ring provider explicitly, so nothing depends on a process-default provider.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::reloadable::{ReloadableClientVerifier, ReloadableServerCert};
use crate::CertError;

/// TLS 1.3 only: QUIC requires it.
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The crypto provider (ring) used by every config this crate builds.
///
/// Shared so callers building their own rustls or quinn objects use the same one.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Server config for the QUIC listener agents dial: TLS 1.3, client certificate REQUIRED.
///
/// Agent certificates are verified against `agent_ca` (including EKU clientAuth); `alpn` is
/// the list of protocols offered.
pub fn agent_facing_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    agent_ca: RootCertStore,
    alpn: Vec<Vec<u8>>,
) -> Result<ServerConfig, CertError> {
    const WHAT: &str = "agent-facing server";
    let verifier = client_verifier(WHAT, agent_ca, false)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS13_ONLY)
        .map_err(|source| CertError::Tls { what: WHAT, source })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|source| CertError::Tls { what: WHAT, source })?;
    config.alpn_protocols = alpn;
    Ok(config)
}

/// Server config for the agent port over replaceable material (see [`crate::reloadable`]).
///
/// TLS 1.3; with `verifier` a client certificate is required (tunnel), without none is
/// asked for (enrollment, authenticated by its token); `alpn` is the protocols offered.
pub fn reloadable_server_config(
    cert: Arc<ReloadableServerCert>,
    verifier: Option<ReloadableClientVerifier>,
    alpn: Vec<Vec<u8>>,
) -> Result<ServerConfig, CertError> {
    const WHAT: &str = "agent-facing server";
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS13_ONLY)
        .map_err(|source| CertError::Tls { what: WHAT, source })?;
    let builder = match verifier {
        Some(v) => builder.with_client_cert_verifier(Arc::new(v)),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = alpn;
    Ok(config)
}

/// Client config for enrollment: pins `server_ca`, presents no certificate.
pub fn enroll_client_config(
    server_ca: RootCertStore,
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig, CertError> {
    let mut config = tls13_client("enrollment client", server_ca)?.with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok(config)
}

/// A TLS 1.3 client builder that verifies the server against `server_ca`
/// (which must not be empty); `what` names the configuration in errors.
fn tls13_client(
    what: &'static str,
    server_ca: RootCertStore,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, CertError> {
    if server_ca.is_empty() {
        return Err(CertError::EmptyRootStore { what });
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(TLS13_ONLY)
        .map_err(|source| CertError::Tls { what, source })?
        .with_root_certificates(server_ca))
}

/// Server config for the `--proxy-addr` listener kube-apiserver connects to: TLS 1.2 and 1.3.
///
/// A client certificate, if presented, must verify against `client_ca`; a client without
/// one is let through so the server can answer a readable HTTP 403 instead of a TLS alert.
pub fn proxy_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: RootCertStore,
) -> Result<ServerConfig, CertError> {
    proxy_server_config_reloadable(Arc::new(ReloadableServerCert::new(chain, key)?), client_ca)
}

/// [`proxy_server_config`] over a replaceable certificate, so `--proxy-addr` serves a
/// reloaded `--tls-cert` to new connections like the agent port does.
pub fn proxy_server_config_reloadable(
    cert: Arc<ReloadableServerCert>,
    client_ca: RootCertStore,
) -> Result<ServerConfig, CertError> {
    const WHAT: &str = "proxy server";
    let verifier = client_verifier(WHAT, client_ca, true)?;
    Ok(ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|source| CertError::Tls { what: WHAT, source })?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert))
}

/// Client config for the agent's QUIC connection: TLS 1.3, presents the agent certificate.
///
/// The server is verified against `server_ca`; `alpn` is the list of protocols offered.
pub fn agent_client_config(
    server_ca: RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: Vec<Vec<u8>>,
) -> Result<ClientConfig, CertError> {
    const WHAT: &str = "agent client";
    let mut config = tls13_client(WHAT, server_ca)?
        .with_client_auth_cert(chain, key)
        .map_err(|source| CertError::Tls { what: WHAT, source })?;
    config.alpn_protocols = alpn;
    Ok(config)
}

/// Builds a WebPKI client-certificate verifier over `roots`.
fn client_verifier(
    what: &'static str,
    roots: RootCertStore,
    allow_unauthenticated: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, CertError> {
    if roots.is_empty() {
        return Err(CertError::EmptyRootStore { what });
    }
    let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
    let builder = if allow_unauthenticated {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder
        .build()
        .map_err(|source| CertError::Verifier { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{
        CertificateAuthority, IssuedCert, DEFAULT_CA_VALIDITY, DEFAULT_CERT_VALIDITY,
    };
    use crate::node::NodeIdentity;
    use rustls::{ClientConnection, ConnectionCommon, ServerConnection, SideData};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::ServerName;
    use std::ops::DerefMut;

    const ALPN: &[u8] = b"edgetunnel/1";
    const SERVER_NAME: &str = "tunnel.example.com";

    fn chain(issued: &IssuedCert) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap()]
    }

    fn key(issued: &IssuedCert) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap()
    }

    fn roots(ca: &CertificateAuthority) -> RootCertStore {
        let mut store = RootCertStore::empty();
        store.add(ca.cert_der().clone()).unwrap();
        store
    }

    fn agent(ca: &CertificateAuthority, node: &str) -> IssuedCert {
        let identity = NodeIdentity::new(node, vec!["10.1.2.3".parse().unwrap()]).unwrap();
        ca.issue_agent(&identity, DEFAULT_CERT_VALIDITY).unwrap()
    }

    struct Pki {
        ca: CertificateAuthority,
        server: IssuedCert,
    }

    fn pki() -> Pki {
        let ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let server = ca
            .issue_server(SERVER_NAME, &[], DEFAULT_CERT_VALIDITY)
            .unwrap();
        Pki { ca, server }
    }

    /// Runs a handshake entirely in memory; returns the first error either side hits.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), rustls::Error> {
        for _ in 0..20 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
            transfer(client, server)?;
            transfer(server, client)?;
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    /// Moves every pending TLS record from `from` to `to` and lets `to` process them.
    fn transfer(
        from: &mut impl DerefMut<Target = ConnectionCommon<impl SideData>>,
        to: &mut impl DerefMut<Target = ConnectionCommon<impl SideData>>,
    ) -> Result<(), rustls::Error> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut rest = &buf[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    fn client_conn(config: ClientConfig) -> ClientConnection {
        ClientConnection::new(Arc::new(config), ServerName::try_from(SERVER_NAME).unwrap()).unwrap()
    }

    fn server_conn(config: ServerConfig) -> ServerConnection {
        ServerConnection::new(Arc::new(config)).unwrap()
    }

    fn agent_facing(pki: &Pki) -> ServerConfig {
        agent_facing_server_config(
            chain(&pki.server),
            key(&pki.server),
            roots(&pki.ca),
            vec![ALPN.to_vec()],
        )
        .unwrap()
    }

    #[test]
    fn mutual_tls_succeeds_with_ca_signed_agent_cert() {
        let pki = pki();
        let agent = agent(&pki.ca, "edge-1");
        let client_cfg = agent_client_config(
            roots(&pki.ca),
            chain(&agent),
            key(&agent),
            vec![ALPN.to_vec()],
        )
        .unwrap();
        let mut client = client_conn(client_cfg);
        let mut server = server_conn(agent_facing(&pki));
        handshake(&mut client, &mut server).unwrap();

        assert_eq!(server.alpn_protocol(), Some(ALPN));
        assert_eq!(
            server.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let peer = server.peer_certificates().unwrap();
        let identity = crate::identity::agent_identity(&peer[0]).unwrap();
        assert_eq!(identity.node_name, "edge-1");
    }

    #[test]
    fn mutual_tls_fails_with_agent_cert_from_another_ca() {
        let pki = pki();
        let rogue_ca = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let agent = agent(&rogue_ca, "edge-1");
        let client_cfg = agent_client_config(
            roots(&pki.ca),
            chain(&agent),
            key(&agent),
            vec![ALPN.to_vec()],
        )
        .unwrap();
        let mut client = client_conn(client_cfg);
        let mut server = server_conn(agent_facing(&pki));
        let err = handshake(&mut client, &mut server).unwrap_err();
        // Every generated CA is named "edgetunnel-ca", so webpki finds a same-named issuer
        // and reports a bad signature rather than an unknown issuer.
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    rustls::CertificateError::BadSignature
                        | rustls::CertificateError::UnknownIssuer
                )
            ),
            "{err:?}"
        );
    }

    #[test]
    fn agent_facing_server_requires_a_client_cert() {
        let pki = pki();
        let client_cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(TLS13_ONLY)
            .unwrap()
            .with_root_certificates(roots(&pki.ca))
            .with_no_client_auth();
        let mut client = client_conn(client_cfg);
        let mut server = server_conn(agent_facing(&pki));
        let err = handshake(&mut client, &mut server).unwrap_err();
        assert!(
            matches!(err, rustls::Error::NoCertificatesPresented),
            "{err:?}"
        );
    }

    #[test]
    fn agent_facing_server_rejects_server_auth_only_cert() {
        // A server certificate (EKU serverAuth) must not authenticate an agent.
        let pki = pki();
        let client_cfg = agent_client_config(
            roots(&pki.ca),
            chain(&pki.server),
            key(&pki.server),
            vec![ALPN.to_vec()],
        )
        .unwrap();
        let mut client = client_conn(client_cfg);
        let mut server = server_conn(agent_facing(&pki));
        assert!(handshake(&mut client, &mut server).is_err());
    }

    #[test]
    fn agent_rejects_server_from_another_ca() {
        let pki = pki();
        let other = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let agent = agent(&pki.ca, "edge-1");
        let client_cfg = agent_client_config(
            roots(&other),
            chain(&agent),
            key(&agent),
            vec![ALPN.to_vec()],
        )
        .unwrap();
        let mut client = client_conn(client_cfg);
        let mut server = server_conn(agent_facing(&pki));
        assert!(handshake(&mut client, &mut server).is_err());
    }

    #[test]
    fn proxy_server_accepts_client_without_cert_over_tls12_and_13() {
        let pki = pki();
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let client_cfg = ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots(&pki.ca))
                .with_no_client_auth();
            let server_cfg =
                proxy_server_config(chain(&pki.server), key(&pki.server), roots(&pki.ca)).unwrap();
            let mut client = client_conn(client_cfg);
            let mut server = server_conn(server_cfg);
            handshake(&mut client, &mut server).unwrap();
            assert!(server.peer_certificates().is_none());
            assert_eq!(server.protocol_version(), Some(version.version));
        }
    }

    #[test]
    fn proxy_server_verifies_presented_client_certs() {
        let pki = pki();
        let proxy_client = pki
            .ca
            .issue_client(crate::issue::DEFAULT_PROXY_CLIENT_CN, DEFAULT_CERT_VALIDITY)
            .unwrap();
        let client_cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&pki.ca))
            .with_client_auth_cert(chain(&proxy_client), key(&proxy_client))
            .unwrap();
        let server_cfg =
            proxy_server_config(chain(&pki.server), key(&pki.server), roots(&pki.ca)).unwrap();
        let mut client = client_conn(client_cfg);
        let mut server = server_conn(server_cfg);
        handshake(&mut client, &mut server).unwrap();
        let peer = server.peer_certificates().unwrap();
        assert_eq!(
            crate::identity::common_name(&peer[0]).unwrap().as_deref(),
            Some(crate::issue::DEFAULT_PROXY_CLIENT_CN)
        );

        // A certificate from another CA is still refused.
        let rogue = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        let rogue_client = rogue
            .issue_client("intruder", DEFAULT_CERT_VALIDITY)
            .unwrap();
        let client_cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots(&pki.ca))
            .with_client_auth_cert(chain(&rogue_client), key(&rogue_client))
            .unwrap();
        let server_cfg =
            proxy_server_config(chain(&pki.server), key(&pki.server), roots(&pki.ca)).unwrap();
        let mut client = client_conn(client_cfg);
        let mut server = server_conn(server_cfg);
        assert!(handshake(&mut client, &mut server).is_err());
    }

    #[test]
    fn agent_facing_server_refuses_tls12_clients() {
        let pki = pki();
        let agent = agent(&pki.ca, "edge-1");
        let client_cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots(&pki.ca))
            .with_client_auth_cert(chain(&agent), key(&agent))
            .unwrap();
        let mut client = client_conn(client_cfg);
        let mut server = server_conn(agent_facing(&pki));
        assert!(handshake(&mut client, &mut server).is_err());
    }

    #[test]
    fn mismatched_key_and_empty_roots_are_errors() {
        let pki = pki();
        let agent = agent(&pki.ca, "edge-1");
        let err =
            agent_facing_server_config(chain(&pki.server), key(&agent), roots(&pki.ca), vec![])
                .unwrap_err();
        assert!(matches!(err, CertError::Tls { .. }), "{err}");
        let err = agent_facing_server_config(
            chain(&pki.server),
            key(&pki.server),
            RootCertStore::empty(),
            vec![],
        )
        .unwrap_err();
        assert!(matches!(err, CertError::EmptyRootStore { .. }), "{err}");
        let err = agent_client_config(RootCertStore::empty(), chain(&agent), key(&agent), vec![])
            .unwrap_err();
        assert!(matches!(err, CertError::EmptyRootStore { .. }), "{err}");
        let err = proxy_server_config(chain(&pki.server), key(&pki.server), RootCertStore::empty())
            .unwrap_err();
        assert!(matches!(err, CertError::EmptyRootStore { .. }), "{err}");
    }

    #[test]
    fn reloadable_config_serves_replaced_certificate_and_ca() {
        let pki = pki();
        let cert =
            Arc::new(ReloadableServerCert::new(chain(&pki.server), key(&pki.server)).unwrap());
        let verifier = ReloadableClientVerifier::new(roots(&pki.ca)).unwrap();
        let config = Arc::new(
            reloadable_server_config(cert.clone(), Some(verifier.clone()), vec![ALPN.to_vec()])
                .unwrap(),
        );
        let a = agent(&pki.ca, "edge-1");
        let client = || {
            client_conn(
                agent_client_config(roots(&pki.ca), chain(&a), key(&a), vec![ALPN.to_vec()])
                    .unwrap(),
            )
        };
        let connect = |mut c: ClientConnection| {
            let mut s = ServerConnection::new(config.clone()).unwrap();
            handshake(&mut c, &mut s).map(|()| c.peer_certificates().unwrap()[0].clone())
        };
        assert_eq!(connect(client()).unwrap(), chain(&pki.server)[0]);

        let newer = pki
            .ca
            .issue_server(SERVER_NAME, &[], DEFAULT_CERT_VALIDITY)
            .unwrap();
        cert.replace(chain(&newer), key(&newer)).unwrap();
        assert_eq!(connect(client()).unwrap(), chain(&newer)[0]);

        // A key that does not match is refused and the served certificate stays.
        assert!(cert.replace(chain(&pki.server), key(&newer)).is_err());
        assert_eq!(cert.leaf().unwrap(), chain(&newer)[0]);

        // Another CA: this agent is refused from now on.
        let other = CertificateAuthority::generate(DEFAULT_CA_VALIDITY).unwrap();
        verifier.replace(roots(&other)).unwrap();
        assert!(connect(client()).is_err());
    }

    #[test]
    fn enrollment_config_asks_for_no_certificate_tunnel_config_requires_one() {
        let pki = pki();
        let cert =
            Arc::new(ReloadableServerCert::new(chain(&pki.server), key(&pki.server)).unwrap());
        let verifier = ReloadableClientVerifier::new(roots(&pki.ca)).unwrap();
        let anonymous =
            || client_conn(enroll_client_config(roots(&pki.ca), vec![ALPN.to_vec()]).unwrap());
        let tunnel =
            reloadable_server_config(cert.clone(), Some(verifier), vec![ALPN.to_vec()]).unwrap();
        assert!(handshake(&mut anonymous(), &mut server_conn(tunnel)).is_err());
        let enroll = reloadable_server_config(cert, None, vec![ALPN.to_vec()]).unwrap();
        let mut server = server_conn(enroll);
        handshake(&mut anonymous(), &mut server).unwrap();
        assert!(server.peer_certificates().is_none());
    }
}
