//! The enrollment endpoint's HTTP/1.1 side: `POST /v1/enroll` and `POST /v1/renew` only.
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
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::issuer::{IssueError, Issuer};

/// Longest an enrollment connection may take, from TLS established to answer sent.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one enrollment connection.
pub async fn serve(stream: TlsStream<TcpStream>, issuer: Arc<Issuer>) {
    let remote = stream.get_ref().0.peer_addr().ok();
    let client_cert: Option<CertificateDer<'static>> = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned());
    let client_cert = Arc::new(client_cert);
    let service = hyper::service::service_fn(move |req| {
        let issuer = issuer.clone();
        let client_cert = client_cert.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                handle(req, &issuer, client_cert.as_ref().as_ref()).await,
            )
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
async fn handle(
    req: Request<Incoming>,
    issuer: &Issuer,
    client_cert: Option<&CertificateDer<'static>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let result = match (req.method(), path.as_str()) {
        (&Method::POST, proto::enroll::ENROLL_PATH) => match bearer_token(&req) {
            Some(token) => match read_body(req).await {
                Ok(csr) => issuer.enroll(&token, &csr),
                Err(e) => Err(e),
            },
            None => Err(IssueError::BadRequest(
                "missing \"Authorization: Bearer <bootstrap token>\"".into(),
            )),
        },
        (&Method::POST, proto::enroll::RENEW_PATH) => match read_body(req).await {
            Ok(csr) => issuer.renew(client_cert, &csr),
            Err(e) => Err(e),
        },
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                format!(
                    "only POST {} and POST {} are served here\n",
                    proto::enroll::ENROLL_PATH,
                    proto::enroll::RENEW_PATH
                ),
            )
        }
    };
    let node = client_cert
        .and_then(|c| certs::agent_identity(c).ok())
        .map(|id| id.node_name);
    match result {
        Ok(pem) => {
            issuer
                .metrics
                .enrollments
                .with_label_values(&[kind(&path), "issued"])
                .inc();
            text(StatusCode::OK, pem)
        }
        Err(e) => {
            tracing::warn!(path = %path, node = ?node, error = %e, "certificate request refused");
            issuer
                .metrics
                .enrollments
                .with_label_values(&[kind(&path), e.label()])
                .inc();
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            text(status, format!("{e}\n"))
        }
    }
}

fn kind(path: &str) -> &'static str {
    if path == proto::enroll::RENEW_PATH {
        "renew"
    } else {
        "enroll"
    }
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
