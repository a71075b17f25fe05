//! TLS for the fake apiserver: its own CA with a serving certificate carrying the SANs kube
//! clients dial (127.0.0.1, localhost, kubernetes.default.svc), client certificates for
//! kubelet-like callers, and the rustls server config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

/// Serving certificate, key and (optionally) the CA client certificates must chain to.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// PEM certificate chain the server presents.
    pub cert: PathBuf,
    /// PEM (PKCS#8) private key of `cert`.
    pub key: PathBuf,
    /// When set, client certificates are verified against this CA (PEM); the CN of one
    /// presented is recorded in [`super::RecordedRequest::client_cn`].
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: clients must present a certificate (else one is optional, as
    /// kube-apiserver, which also takes bearer tokens, makes it).
    pub client_cert_required: bool,
}

/// Why the TLS material could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// rcgen refused to build a key or certificate.
    #[error("generating {what}: {source}")]
    Generate {
        what: &'static str,
        source: rcgen::Error,
    },
    /// A PEM file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A PEM file could not be read or parsed.
    #[error(transparent)]
    Load(#[from] certs::CertError),
    /// rustls refused the configuration.
    #[error("building the {what}: {reason}")]
    Config { what: &'static str, reason: String },
}

/// A throw-away CA in a directory, issuing the fake apiserver's serving certificate and
/// client certificates, so tests can run it like a real TLS apiserver.
pub struct ApiserverPki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// SANs of the serving certificate: what in-cluster and node-local clients dial.
const SERVER_SANS: [&str; 5] = [
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
];

impl ApiserverPki {
    /// Creates `ca.crt`, `apiserver.crt` and `apiserver.key` in `dir`.
    pub fn generate(dir: &Path) -> Result<Self, TlsSetupError> {
        let gen = |what| move |source| TlsSetupError::Generate { what, source };
        let ca_key = KeyPair::generate().map_err(gen("CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(gen("CA"))?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "fake-apiserver-ca");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params.self_signed(&ca_key).map_err(gen("CA"))?;
        write(&dir.join("ca.crt"), &ca_cert.pem())?;
        let pki = Self {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, ca_key),
        };
        let sans: Vec<String> = SERVER_SANS.iter().map(|s| (*s).to_owned()).collect();
        pki.issue(
            "apiserver",
            sans,
            "kube-apiserver",
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        Ok(pki)
    }

    /// Path of the CA certificate clients trust.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CA's private key (PEM), for a signer playing the cluster CA.
    pub fn ca_key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Server TLS settings; client certificates of this CA are verified (their CN
    /// recorded), and with `require_client_cert` clients must present one.
    pub fn server_tls(&self, require_client_cert: bool) -> ServerTls {
        ServerTls {
            cert: self.dir.join("apiserver.crt"),
            key: self.dir.join("apiserver.key"),
            client_ca: Some(self.ca_cert()),
            client_cert_required: require_client_cert,
        }
    }

    /// Issues a client certificate `CN=<cn>[, O=<org>]` (e.g. `system:node:edge-1`,
    /// `system:nodes`) as `<file_stem>.crt`/`.key`; returns (cert, key) paths.
    pub fn client(
        &self,
        file_stem: &str,
        cn: &str,
        org: Option<&str>,
    ) -> Result<(PathBuf, PathBuf), TlsSetupError> {
        self.issue(
            file_stem,
            Vec::new(),
            cn,
            org,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    /// Issues a serving certificate for `sans` (IPs or DNS names) as
    /// `<file_stem>.crt`/`.key`, replacing earlier files of that name; returns (cert, key).
    pub fn serving(
        &self,
        file_stem: &str,
        sans: &[&str],
    ) -> Result<(PathBuf, PathBuf), TlsSetupError> {
        let sans = sans.iter().map(|s| (*s).to_owned()).collect();
        self.issue(
            file_stem,
            sans,
            "hub-serving",
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// Writes a kubeconfig for `server` (the fake's URL) with this CA and a client
    /// certificate `CN=<cn>[, O=<org>]` issued for it; returns its path.
    pub fn kubeconfig(
        &self,
        server: &str,
        cn: &str,
        org: Option<&str>,
    ) -> Result<PathBuf, TlsSetupError> {
        let stem = format!("kubeconfig-{}", cn.replace(':', "-"));
        let (cert, key) = self.client(&stem, cn, org)?;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: user\ncurrent-context: fake\n",
            self.ca_cert().display(),
            cert.display(),
            key.display()
        );
        let path = self.dir.join(format!("{stem}.conf"));
        write(&path, &text)?;
        Ok(path)
    }

    fn issue(
        &self,
        file_stem: &str,
        sans: Vec<String>,
        cn: &str,
        org: Option<&str>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(PathBuf, PathBuf), TlsSetupError> {
        let gen = |source| TlsSetupError::Generate {
            what: "leaf certificate",
            source,
        };
        let key = KeyPair::generate().map_err(gen)?;
        let mut params = CertificateParams::new(sans).map_err(gen)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(org) = org {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org);
        }
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).map_err(gen)?;
        let cert_path = self.dir.join(format!("{file_stem}.crt"));
        let key_path = self.dir.join(format!("{file_stem}.key"));
        write(&cert_path, &cert.pem())?;
        write(&key_path, &key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}

fn write(path: &Path, text: &str) -> Result<(), TlsSetupError> {
    std::fs::write(path, text).map_err(|source| TlsSetupError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The rustls config for [`ServerTls`]: TLS 1.2 and 1.3, ALPN `http/1.1` only (client-go
/// then speaks HTTP/1.1, which this server implements).
pub fn server_config(tls: &ServerTls) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let chain = certs::load_cert_chain(&tls.cert)?;
    let key = certs::load_private_key(&tls.key)?;
    let builder = ServerConfig::builder_with_provider(certs::provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| TlsSetupError::Config {
            what: "TLS versions",
            reason: e.to_string(),
        })?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let roots = certs::load_root_store(ca)?;
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), certs::provider());
            if !tls.client_cert_required {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| TlsSetupError::Config {
                what: "client certificate verifier",
                reason: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsSetupError::Config {
            what: "server certificate",
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
