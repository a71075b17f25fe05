//! The enrollment endpoint's HTTP/1.1 side: `POST /v1/enroll` only.
//!
//! One request per connection, a bounded body ([`proto::enroll::MAX_BODY_LEN`]) and an
//! overall deadline, so an anonymous client (enrollment needs no certificate) can hold
//! neither memory nor a connection for long.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_rustls::server::TlsStream;
use transport::tunnel_tcp::TunnelTcp;

use super::issuer::{IssueError, Issuer};
use super::rate::EnrollRate;
use crate::log_limit::LogLimit;

/// At most one "enrollment refused" line per second (anonymous clients can
/// fail at will); the lines left out are counted in the next one.
static REFUSAL_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));

/// Longest an enrollment connection may take, from TLS established to answer sent.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one enrollment connection; `rate` limits attempts per source IP.
pub async fn serve(stream: TlsStream<TunnelTcp>, issuer: Arc<Issuer>, rate: Arc<EnrollRate>) {
    let remote = stream.get_ref().0.get_ref().peer_addr().ok();
    let service = hyper::service::service_fn(move |req| {
        let (issuer, rate) = (issuer.clone(), rate.clone());
        async move {
            if let Some(Err(wait)) = remote.map(|r| rate.check(r.ip())) {
                return Ok(too_many(&issuer, wait));
            }
            Ok::<_, std::convert::Infallible>(handle(req, &issuer).await)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(REQUEST_TIMEOUT, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(?remote, error = %e, "enrollment connection failed"),
        Err(_) => tracing::info!(?remote, "enrollment request timed out"),
    }
}

/// Answers one request: the certificate PEM, or a status with a plain-text reason.
async fn handle(req: Request<Incoming>, issuer: &Issuer) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || req.uri().path() != proto::enroll::ENROLL_PATH {
        let body = format!("only POST {} is served here\n", proto::enroll::ENROLL_PATH);
        return text(StatusCode::NOT_FOUND, body);
    }
    let result = match bearer_token(&req) {
        Some(token) => match read_body(req).await {
            Ok(csr) => issuer.enroll(&token, &csr),
            Err(e) => Err(e),
        },
        None => Err(IssueError::BadRequest(
            "missing \"Authorization: Bearer <bootstrap token>\"".into(),
        )),
    };
    let counter = |result: &str| {
        issuer
            .metrics
            .enrollments
            .with_label_values(&["enroll", result])
            .inc()
    };
    match result {
        Ok(pem) => {
            counter("issued");
            text(StatusCode::OK, pem)
        }
        Err(e) => {
            // The log names the exact cause; the client gets e.client_message().
            if let Some(suppressed) = REFUSAL_LOG.allow(std::time::Instant::now()) {
                tracing::warn!(error = %e, suppressed, "enrollment refused");
            }
            counter(e.label());
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            text(status, format!("{}\n", e.client_message()))
        }
    }
}

/// `429` with `Retry-After` (whole seconds, rounded up) for a source over its limit.
fn too_many(issuer: &Issuer, wait: Duration) -> Response<Full<Bytes>> {
    issuer
        .metrics
        .enrollments
        .with_label_values(&["enroll", "rate_limited"])
        .inc();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let secs = secs.max(1);
    let mut resp = text(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many enrollment attempts from this address (--enroll-attempts-per-minute); retry in {secs} s\n"
        ),
    );
    resp.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from(secs),
    );
    resp
}

/// The token of `Authorization: Bearer <token>`.
fn bearer_token(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_owned())
}

/// Reads the body (at most [`proto::enroll::MAX_BODY_LEN`]) as UTF-8 text.
async fn read_body(req: Request<Incoming>) -> Result<String, IssueError> {
    let body = Limited::new(req.into_body(), proto::enroll::MAX_BODY_LEN)
        .collect()
        .await
        .map_err(|e| IssueError::BadRequest(format!("reading the body: {e}")))?
        .to_bytes();
    String::from_utf8(body.to_vec())
        .map_err(|_| IssueError::BadRequest("the body is not a PEM CSR (not UTF-8)".into()))
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
