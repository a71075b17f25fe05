//! Deciding and signing enrollment and renewal requests (no sockets).
//!
//! Enrollment: a bootstrap token proves which node a CSR may ask for; the certificate is
//! issued for exactly the token's node and IPs, and the token is consumed (atomically) as
//! the certificate is issued. Renewal: the client certificate of the request proves the
//! identity, which the new certificate repeats, unless the node is revoked.

use std::sync::Arc;
use std::time::Duration;

use certs::{
    BootstrapToken, CertError, CertificateAuthority, NodeIdentity, TokenError, TokenStore,
};
use time::OffsetDateTime;

use crate::metrics::ServerMetrics;
use crate::revocation::Revocations;

/// Issues agent certificates for the enrollment endpoint.
pub struct Issuer {
    /// The agent CA with its key (`--agent-ca-key`); `None`: this server cannot issue.
    pub ca: Option<CertificateAuthority>,
    /// `--token-dir`; `None`: enrollment with tokens is off (renewal may still work).
    pub tokens: Option<TokenStore>,
    /// Lifetime of issued certificates (`--agent-cert-ttl`).
    pub validity: Duration,
    /// Revoked nodes: refused renewal; new certificates start after the revocation.
    pub revocations: Arc<Revocations>,
    /// Expiry gauges and request counters.
    pub metrics: ServerMetrics,
}

/// Why a request got no certificate. The message is sent to the agent as-is.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// No `--agent-ca-key`.
    #[error("this server cannot issue certificates (it runs without --agent-ca-key)")]
    NoCaKey,
    /// No `--token-dir`.
    #[error(
        "enrollment with bootstrap tokens is off on this server (it runs without --token-dir)"
    )]
    TokensDisabled,
    /// The token is malformed, unknown, used, expired, or the store failed.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The CSR is invalid or asks for another identity, or signing failed.
    #[error(transparent)]
    Certificate(#[from] CertError),
    /// The node is revoked.
    #[error("the certificate of node {node:?} was revoked (at unix time {at}); enroll again with a new bootstrap token")]
    Revoked { node: String, at: i64 },
    /// The HTTP request is not a token + CSR.
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// The one answer for a token that is not (or no longer) valid.
pub const INVALID_TOKEN: &str =
    "the bootstrap token is not valid (unknown, wrong, or already used); \
     create a new one with `tunnel-server certs token create`";

impl IssueError {
    /// The HTTP status: 4xx when the same request can never succeed, 5xx otherwise.
    pub fn status(&self) -> u16 {
        match self {
            IssueError::Token(t) if !t.is_permanent() => 503,
            // Our own signing failed (or the CA expired): not the client's fault.
            IssueError::Certificate(CertError::Issue { .. })
            | IssueError::Certificate(CertError::InvalidValidity { .. }) => 500,
            IssueError::BadRequest(_) => 400,
            _ => 403,
        }
    }

    /// What the client is told. Every bad-token case that does not prove
    /// knowledge of the secret (malformed, unknown id, wrong secret, already
    /// used) reads the same, so the endpoint cannot be used to find valid or
    /// used token ids; the server log keeps the exact cause.
    pub fn client_message(&self) -> String {
        match self {
            IssueError::Token(
                TokenError::Malformed
                | TokenError::Unknown { .. }
                | TokenError::WrongSecret { .. }
                | TokenError::AlreadyUsed { .. },
            ) => INVALID_TOKEN.to_string(),
            other => other.to_string(),
        }
    }

    /// Label for `tunnel_server_enrollments_total{result}`.
    pub fn label(&self) -> &'static str {
        match self {
            IssueError::Token(TokenError::AlreadyUsed { .. }) => "token_used",
            IssueError::Token(TokenError::Expired { .. }) => "token_expired",
            IssueError::Token(TokenError::Unknown { .. })
            | IssueError::Token(TokenError::WrongSecret { .. })
            | IssueError::Token(TokenError::Malformed) => "token_invalid",
            IssueError::Certificate(CertError::CsrNotAllowed { .. }) => "identity_mismatch",
            IssueError::Revoked { .. } => "revoked",
            _ => "error",
        }
    }
}

impl Issuer {
    /// `/v1/enroll`: checks `token_text`, signs `csr_pem` for the token's identity, consumes it.
    pub fn enroll(&self, token_text: &str, csr_pem: &str) -> Result<String, IssueError> {
        let ca = self.ca.as_ref().ok_or(IssueError::NoCaKey)?;
        let store = self.tokens.as_ref().ok_or(IssueError::TokensDisabled)?;
        let token = BootstrapToken::parse(token_text)?;
        let record = store.lookup(token.id())?;
        certs::token::check_token(&record, &token, crate::reload::unix_now())?;
        let allowed = record.identity();
        let pem = self.sign(ca, csr_pem, &allowed)?;
        // The single-use point: of two concurrent uses only one rename succeeds, and the
        // loser's certificate is dropped unsent.
        store.consume(token.id())?;
        tracing::info!(node = %allowed.node_name, token = token.id(), "node enrolled with a bootstrap token");
        Ok(pem)
    }

    /// Renewal over a registered connection: signs `csr_pem` for `identity` (from the
    /// connection's verified certificate, which started at `not_before`) unless revoked.
    pub fn renew(
        &self,
        identity: &NodeIdentity,
        not_before: i64,
        csr_pem: &str,
    ) -> Result<String, IssueError> {
        let ca = self.ca.as_ref().ok_or(IssueError::NoCaKey)?;
        if let Some(at) = self
            .revocations
            .current()
            .revokes(&identity.node_name, not_before)
        {
            return Err(IssueError::Revoked {
                node: identity.node_name.clone(),
                at,
            });
        }
        let pem = self.sign(ca, csr_pem, identity)?;
        tracing::info!(node = %identity.node_name, "agent certificate renewed");
        Ok(pem)
    }

    /// Signs for `allowed`, starting after the node's last revocation; records the expiry.
    fn sign(
        &self,
        ca: &CertificateAuthority,
        csr_pem: &str,
        allowed: &NodeIdentity,
    ) -> Result<String, IssueError> {
        let floor = self
            .revocations
            .current()
            .revoked_at(&allowed.node_name)
            .and_then(|at| OffsetDateTime::from_unix_timestamp(at.saturating_add(1)).ok());
        let pem = ca.sign_agent_csr(csr_pem, allowed, self.validity, floor)?;
        if let Some(not_after) = certs::load::first_cert_not_after(&pem) {
            self.metrics
                .set_agent_certificate_expiry(&allowed.node_name, not_after);
        }
        Ok(pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use certs::TokenRecord;

    struct Fixture {
        issuer: Issuer,
        dir: std::path::PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("issuer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ca = CertificateAuthority::generate(Duration::from_secs(3600)).unwrap();
        Fixture {
            issuer: Issuer {
                ca: Some(ca),
                tokens: Some(TokenStore::new(&dir)),
                validity: Duration::from_secs(60),
                revocations: Arc::new(Revocations::default()),
                metrics: ServerMetrics::new().unwrap(),
            },
            dir,
        }
    }

    fn token(f: &Fixture, node: &str, expires_unix: i64) -> String {
        let t = BootstrapToken::generate().unwrap();
        let store = f.issuer.tokens.as_ref().unwrap();
        store
            .create(&TokenRecord {
                id: t.id().into(),
                secret_sha256: t.secret_sha256(),
                node: node.into(),
                ips: vec!["10.0.0.1".parse().unwrap()],
                expires_unix,
            })
            .unwrap();
        t.to_string()
    }

    fn csr(node: &str) -> String {
        let id = NodeIdentity::new(node, vec!["10.0.0.1".parse().unwrap()]).unwrap();
        certs::agent_key_request(&id).unwrap().csr_pem
    }

    #[test]
    fn a_token_enrolls_once() {
        let f = fixture("once");
        let t = token(&f, "edge-a", i64::MAX);
        assert!(f.issuer.enroll(&t, &csr("edge-a")).is_ok());
        let err = f.issuer.enroll(&t, &csr("edge-a")).unwrap_err();
        assert_eq!((err.status(), err.label()), (403, "token_used"), "{err}");
    }

    #[test]
    fn expired_unknown_and_other_node_tokens_are_refused() {
        let f = fixture("refused");
        let expired = token(&f, "edge-a", 1);
        let err = f.issuer.enroll(&expired, &csr("edge-a")).unwrap_err();
        assert_eq!(err.label(), "token_expired", "{err}");
        let err = f
            .issuer
            .enroll("zzzzzz.0123456789abcdef", &csr("edge-a"))
            .unwrap_err();
        assert_eq!(err.label(), "token_invalid", "{err}");
        let for_a = token(&f, "edge-a", i64::MAX);
        let err = f.issuer.enroll(&for_a, &csr("edge-b")).unwrap_err();
        assert_eq!(
            (err.status(), err.label()),
            (403, "identity_mismatch"),
            "{err}"
        );
        // The refused attempt did not use up the token.
        assert!(f.issuer.enroll(&for_a, &csr("edge-a")).is_ok());
    }

    #[test]
    fn unknown_wrong_and_used_tokens_read_the_same_to_the_client() {
        let f = fixture("uniform");
        let good = token(&f, "edge-a", i64::MAX);
        let id = good.split('.').next().unwrap().to_string();
        let wrong_secret = format!("{id}.0000000000000000");
        let unknown = "zzzzzz.0123456789abcdef";
        let mut answers = Vec::new();
        for t in [unknown, wrong_secret.as_str(), "garbage"] {
            let e = f.issuer.enroll(t, &csr("edge-a")).unwrap_err();
            answers.push((e.status(), e.client_message()));
        }
        f.issuer.enroll(&good, &csr("edge-a")).unwrap();
        let e = f.issuer.enroll(&good, &csr("edge-a")).unwrap_err();
        assert_eq!(e.label(), "token_used");
        answers.push((e.status(), e.client_message()));
        for a in &answers {
            assert_eq!(a, &(403, INVALID_TOKEN.to_string()));
        }
    }

    #[test]
    fn renewal_repeats_the_identity_unless_revoked() {
        let f = fixture("renew");
        let t = token(&f, "edge-a", i64::MAX);
        let pem = f.issuer.enroll(&t, &csr("edge-a")).unwrap();
        let leaf = certs::load::first_cert_der(&pem).unwrap();
        let identity = certs::agent_identity(&leaf).unwrap();
        let not_before = certs::not_before_unix(&leaf).unwrap();
        let renewed = f
            .issuer
            .renew(&identity, not_before, &csr("edge-a"))
            .unwrap();
        let renewed = certs::load::first_cert_der(&renewed).unwrap();
        assert_eq!(certs::agent_identity(&renewed).unwrap(), identity);
        let err = f
            .issuer
            .renew(&identity, not_before, &csr("edge-b"))
            .unwrap_err();
        assert_eq!(err.label(), "identity_mismatch");
        let now = crate::reload::unix_now();
        f.issuer
            .revocations
            .replace(crate::revocation::DenyList::parse(&format!("edge-a {now}")).unwrap());
        let err = f
            .issuer
            .renew(&identity, not_before, &csr("edge-a"))
            .unwrap_err();
        assert_eq!((err.status(), err.label()), (403, "revoked"), "{err}");
        // Certificates issued after the revocation are not revoked by it.
        let t = token(&f, "edge-a", i64::MAX);
        let fresh = f.issuer.enroll(&t, &csr("edge-a")).unwrap();
        let fresh = certs::load::first_cert_der(&fresh).unwrap();
        let fresh_start = certs::not_before_unix(&fresh).unwrap();
        assert!(fresh_start > now);
        assert!(f
            .issuer
            .renew(&identity, fresh_start, &csr("edge-a"))
            .is_ok());
    }
}
