//! The enrollment endpoint's wire contract, shared by server and agent.
//!
//! Served on the agent port's TCP listener under its own ALPN, so the tunnel keeps requiring
//! client certificates at the TLS layer while enrollment needs none. The request is an
//! HTTP/1.1 `POST` with a PEM CSR as the body and `Authorization: Bearer <token>`. A 200
//! answer's body is the PEM certificate; any other status carries a plain-text reason.
//! (Renewal does not come here: it runs over the agent's tunnel connection, see
//! [`crate::AgentService::RenewCertificate`].)

/// ALPN protocol id of the enrollment endpoint.
pub const ALPN_ENROLL: &[u8] = b"tunnel-enroll/1";
/// Path for a first certificate, with a bootstrap token.
pub const ENROLL_PATH: &str = "/v1/enroll";
/// Largest CSR or certificate either side accepts (enrollment and renewal).
pub const MAX_BODY_LEN: usize = 64 * 1024;

/// Whether an error status means "retrying the same request cannot succeed".
///
/// Client errors are permanent (reused, expired, unknown or mismatched token, bad CSR),
/// except timeouts and rate limiting; server errors are transient.
pub fn is_permanent_failure(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_permanent_except_timeouts_and_throttling() {
        assert!(is_permanent_failure(403) && is_permanent_failure(400));
        assert!(!is_permanent_failure(408) && !is_permanent_failure(429));
        assert!(!is_permanent_failure(503) && !is_permanent_failure(500));
        assert!(!is_permanent_failure(200));
    }
}
