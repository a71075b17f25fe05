//! A minimal HTTP/1.1 server for admin endpoints (`/metrics`, `/healthz`, ...).
//!
//! Both binaries route a handful of GET paths to strings; hyper does the
//! protocol, this module only binds, routes and keeps slow clients bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
pub use hyper::StatusCode;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What a route returns: status, content type, body.
#[derive(Debug, Clone)]
pub struct AdminResponse {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl AdminResponse {
    /// A `text/plain` response.
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    /// An `application/json` 200 response.
    pub fn json(body: impl Into<Bytes>) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "application/json",
            body: body.into(),
        }
    }
}

/// Routes `(path, query)` of a GET request to a response.
pub type AdminHandler = Arc<dyn Fn(&str, Option<&str>) -> AdminResponse + Send + Sync>;

/// Serves `handler` on an already bound listener until the task is dropped.
pub async fn serve(listener: TcpListener, handler: AdminHandler) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(route(&handler, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(sock), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with error");
            }
        });
    }
}

fn route(handler: &AdminHandler, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let r = if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        AdminResponse::text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n")
    } else {
        handler(req.uri().path(), req.uri().query())
    };
    let mut resp = Response::new(Full::new(r.body));
    *resp.status_mut() = r.status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(r.content_type),
    );
    resp
}

/// Binds the admin listener (so callers can report bind errors at startup).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
