//! The crate's single error type.

use std::path::PathBuf;

/// Everything that can go wrong while issuing, loading or using certificates.
///
/// Messages name the file (when there is one) and the cause, so they can be shown to an
/// operator as-is, e.g. `reading /etc/x/agent.key: no private key found in PEM`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file could not be read (missing, permissions, ...).
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file or directory could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The file or directory that was being written.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A file was read but its content is not the PEM we expected.
    #[error("reading {}: {reason}", path.display())]
    InvalidPem {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A target file already exists and overwriting was not requested.
    #[error("{} already exists (use --force to overwrite)", .0.display())]
    WouldOverwrite(PathBuf),

    /// A CA given as PEM text is unusable (bad PEM, not a CA, key does not match, ...).
    #[error("invalid CA: {reason}")]
    InvalidCa {
        /// What is wrong with it.
        reason: String,
    },

    /// A node name is not a valid DNS-1123 subdomain.
    #[error("invalid node name {name:?}: {reason}")]
    InvalidNodeName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A server name is neither a DNS name nor an IP address.
    #[error("invalid server name {name:?}: {reason}")]
    InvalidServerName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A common name given for a client certificate is unusable.
    #[error("invalid common name {name:?}: {reason}")]
    InvalidCommonName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A requested validity period is zero or does not fit in a certificate.
    #[error("invalid validity period {validity:?}: {reason}")]
    InvalidValidity {
        /// The rejected duration.
        validity: std::time::Duration,
        /// Why it was rejected.
        reason: String,
    },

    /// rcgen failed to build or sign a certificate.
    #[error("issuing {what}: {source}")]
    Issue {
        /// Which certificate was being issued (e.g. "server certificate").
        what: &'static str,
        /// The rcgen error.
        #[source]
        source: rcgen::Error,
    },

    /// A DER certificate could not be parsed as X.509.
    #[error("parsing certificate: {reason}")]
    InvalidCertificate {
        /// The parser's complaint.
        reason: String,
    },

    /// A certificate is well-formed but does not identify an edge node.
    #[error("not an agent certificate: {reason}")]
    NotAnAgentCertificate {
        /// What is missing or wrong.
        reason: String,
    },

    /// rustls rejected the certificates or key while building a TLS config.
    #[error("building {what} TLS config: {source}")]
    Tls {
        /// Which config was being built.
        what: &'static str,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },

    /// The client-certificate verifier could not be built (e.g. empty CA bundle).
    #[error("building {what} client verifier: {source}")]
    Verifier {
        /// Which config the verifier was for.
        what: &'static str,
        /// The rustls error.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },

    /// A TLS config was asked for with an empty trust store.
    #[error("building {what} TLS config: the CA bundle contains no certificates")]
    EmptyRootStore {
        /// Which config was being built.
        what: &'static str,
    },

    /// A certificate signing request is malformed, too large, or its signature is wrong.
    #[error("invalid certificate signing request: {reason}")]
    InvalidCsr {
        /// What is wrong with it.
        reason: String,
    },

    /// A well-formed certificate signing request asks for an identity it may not have.
    #[error("certificate signing request refused: {reason}")]
    CsrNotAllowed {
        /// Which name or address is not allowed.
        reason: String,
    },
}
