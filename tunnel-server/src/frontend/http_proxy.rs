//! `--http-proxy-addr`: a plain-HTTP forward proxy for Prometheus-style
//! clients (`proxy_url`).
//!
//! - `GET http://<node-ip>:<port>/path` (absolute-URI) is dialed through the
//!   node's agent and sent on as an origin-form HTTP/1.1 request; the
//!   response streams back. The client connection is kept alive across
//!   requests, and so is its edge connection: while a client keeps asking
//!   for the same target (Prometheus scrapes a target over its own
//!   connection), requests reuse one tunnel stream and one edge HTTP
//!   connection instead of paying a dial each ([`EdgeSlot`]). A client
//!   connection holds at most one edge connection, released when it closes.
//! - `CONNECT host:port` (for `https://` targets) is answered `200` once the
//!   agent's dial succeeded, then the bytes are spliced like on the CONNECT
//!   front end.
//!
//! Routing, the allowlist and the error statuses are those of
//! [`Dialer::dial`]; anything else than CONNECT or an absolute URI is 405.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use proto::DialTarget;
use tokio::net::TcpListener;
use tracing::Instrument;

use super::conn_cap::ConnCap;
use super::early_http::{EarlyIo, SharedOutcome};
use super::head_clock::{HeadClock, HeadState};
use super::FrontendContext;
use crate::dial::{EdgeStream, Frontend};

/// The metric label for requests on this front end.
const PROTOCOL: &str = "http-proxy";

/// Body type of every response this proxy writes, and of requests it sends on.
type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// An HTTP/1.1 connection to an edge service over one tunnel stream.
struct EdgeHttp {
    target: DialTarget,
    /// The node and the dial's failure, once known.
    outcome: SharedOutcome,
    sender: SendRequest<ProxyBody>,
}

/// The edge connection a client connection used last, kept for its next
/// request to the same target. hyper serves one request of a connection at
/// a time, so the lock is never contended.
#[derive(Default)]
struct EdgeSlot(std::sync::Mutex<Option<EdgeHttp>>);

impl EdgeSlot {
    /// The kept connection if it goes to `target` and is still open.
    fn take_for(&self, target: &DialTarget) -> Option<EdgeHttp> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(e) if &e.target == target && !e.sender.is_closed() => Some(e),
            _ => None,
        }
    }

    /// Keeps `edge` for the next request (dropping any other).
    fn put(&self, edge: EdgeHttp) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(edge);
    }
}

/// Why a request cannot be proxied, before any dial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("method {0} with a path is not proxied here; send an absolute URI (GET http://host:port/path) or CONNECT host:port")]
    NotAbsolute(String),
    #[error("scheme {0:?} is not proxied as an absolute URI; use CONNECT for https")]
    Scheme(String),
    #[error("bad target: {0}")]
    Bad(String),
}

impl TargetError {
    /// The HTTP status the spec assigns.
    pub fn http_status(&self) -> u16 {
        match self {
            TargetError::NotAbsolute(_) => 405,
            TargetError::Scheme(_) | TargetError::Bad(_) => 400,
        }
    }
}

/// Where a proxy request goes: CONNECT's authority, or an absolute `http://`
/// URI's host and port (default 80).
pub fn request_target(method: &Method, uri: &Uri) -> Result<DialTarget, TargetError> {
    if method == Method::CONNECT {
        let auth = uri
            .authority()
            .ok_or_else(|| TargetError::Bad(format!("CONNECT needs host:port, got {uri}")))?;
        return auth
            .as_str()
            .parse()
            .map_err(|e: proto::TargetParseError| TargetError::Bad(e.to_string()));
    }
    let (Some(scheme), Some(auth)) = (uri.scheme_str(), uri.authority()) else {
        return Err(TargetError::NotAbsolute(method.to_string()));
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(TargetError::Scheme(scheme.to_string()));
    }
    if auth.as_str().contains('@') {
        return Err(TargetError::Bad(
            "credentials in the URI are not forwarded".into(),
        ));
    }
    let hostport = match auth.port_u16() {
        Some(_) => auth.as_str().to_string(),
        None => format!("{}:80", auth.host()),
    };
    hostport
        .parse()
        .map_err(|e: proto::TargetParseError| TargetError::Bad(e.to_string()))
}

pub use transport::hop_by_hop::strip_hop_by_hop;

/// Accepts plain-HTTP proxy clients until the task is dropped; each client
/// connection gets its own [`EdgeSlot`] and [`HeadClock`]. Beyond
/// `--max-connections-per-listener` a client is answered 503 at once.
pub async fn serve(listener: TcpListener, ctx: Arc<FrontendContext>) {
    let cap = Arc::new(ConnCap::new(
        ctx.max_connections,
        "http-proxy-addr",
        ctx.dialer.metrics(),
    ));
    loop {
        let (mut sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                transport::http_server::accept_backoff("http-proxy-addr", &e).await;
                continue;
            }
        };
        let Some(conn_slot) = cap.admit(&peer) else {
            let answer = super::reply::error_response(503, &cap.message());
            tokio::spawn(async move { super::answer_and_linger(&mut sock, &answer).await });
            continue;
        };
        let _ = sock.set_nodelay(true);
        let state = Arc::new(HeadState::default());
        let io = HeadClock::new(sock, state.clone(), ctx.header_timeout, ctx.http_proxy_idle);
        let (ctx, slot) = (ctx.clone(), Arc::new(EdgeSlot::default()));
        let service = hyper::service::service_fn(move |req| {
            let (ctx, slot, state) = (ctx.clone(), slot.clone(), state.clone());
            async move {
                state.begin_request();
                let resp = handle(req, &ctx, &slot, &state).await;
                Ok::<_, Infallible>(resp.map(|body| EndsRequest { body, state }.boxed()))
            }
        });
        tokio::spawn(async move {
            let _conn_slot = conn_slot;
            // The HeadClock replaces hyper's header timeout (which would also
            // cut idle keep-alive connections).
            let conn = hyper::server::conn::http1::Builder::new()
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP proxy connection ended with an error");
            }
        });
    }
}

/// A response body that tells the connection's [`HeadClock`] when the
/// response is over (hyper drops the body once it is written or abandoned).
struct EndsRequest {
    body: ProxyBody,
    state: Arc<HeadState>,
}

impl Drop for EndsRequest {
    fn drop(&mut self) {
        self.state.end_request();
    }
}

impl Body for EndsRequest {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn handle(
    req: Request<Incoming>,
    ctx: &FrontendContext,
    slot: &EdgeSlot,
    state: &HeadState,
) -> Response<ProxyBody> {
    let resp = match request_target(req.method(), req.uri()) {
        Err(e) => error(e.http_status(), &e.to_string()),
        Ok(target) if req.method() == Method::CONNECT => connect(req, target, ctx, state).await,
        Ok(target) => forward(req, target, ctx, slot).await.unwrap_or_else(|e| e),
    };
    ctx.dialer
        .metrics()
        .frontend_requests
        .with_label_values(&[PROTOCOL, resp.status().as_str()])
        .inc();
    resp
}

/// CONNECT: dial, answer 200, splice the upgraded connection.
async fn connect(
    req: Request<Incoming>,
    target: DialTarget,
    ctx: &FrontendContext,
    state: &HeadState,
) -> Response<ProxyBody> {
    let stream = match ctx.dialer.dial(&target, Frontend::Http).await {
        Ok(s) => s,
        Err(e) => return error(e.http_status(), &e.to_string()),
    };
    state.upgraded();
    let EdgeStream {
        mut send,
        recv,
        stream_id,
        node,
        _active,
    } = stream;
    let dialer = ctx.dialer.clone();
    let span = tracing::info_span!("stream", node = %node, stream_id, %target);
    tokio::spawn(
        async move {
            let _active = _active;
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "CONNECT client left before the tunnel started");
                    send.reset(proto::codes::STREAM_CANCELLED);
                    return;
                }
            };
            let mut io = TokioIo::new(upgraded);
            let outcome = dialer
                .splice(&mut io, send, recv, &node, Frontend::Http)
                .await;
            tracing::debug!(to_edge = outcome.to_tunnel, from_edge = outcome.from_tunnel,
                end = ?outcome.end, "stream closed");
        }
        .instrument(span),
    );
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// Starts an HTTP/1.1 client connection to `target` whose tunnel stream is
/// dialed with its first request ([`EarlyIo`]). The connection task holds
/// the stream slot until the connection ends.
async fn dial_edge(
    target: &DialTarget,
    ctx: &FrontendContext,
) -> Result<EdgeHttp, Response<ProxyBody>> {
    let (io, outcome) = EarlyIo::new(ctx.dialer.clone(), target.clone());
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| error(502, &format!("HTTP to {target}: {e}")))?;
    let span = tracing::info_span!("edge_http", %target);
    tokio::spawn(
        async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "edge HTTP connection ended with error");
            }
        }
        .instrument(span),
    );
    Ok(EdgeHttp {
        target: target.clone(),
        outcome,
        sender,
    })
}

/// Absolute URI: send the request as origin-form HTTP/1.1 to the edge
/// service (on the client connection's kept edge connection when it goes
/// to the same target, else on a new dial) and stream the response back.
async fn forward(
    req: Request<Incoming>,
    target: DialTarget,
    ctx: &FrontendContext,
    slot: &EdgeSlot,
) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
    let (mut parts, body) = req.into_parts();
    let host = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = path
        .parse()
        .map_err(|e| error(400, &format!("bad request path: {e}")))?;
    parts.version = Version::HTTP_11;
    parts.extensions = Default::default();
    strip_hop_by_hop(&mut parts.headers);
    // An absolute URI's authority replaces any Host header (RFC 9112 §3.2.2).
    let host = HeaderValue::from_str(&host).map_err(|_| error(400, "bad host in request URI"))?;
    parts.headers.insert(hyper::header::HOST, host);
    // A kept connection may have been closed by the edge service just as
    // this request went out; a request without a body that has no side
    // effects is then sent once more on a new connection.
    let retry_safe = matches!(parts.method, Method::GET | Method::HEAD) && body.is_end_stream();
    let again = retry_safe.then(|| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        )
    });

    let (mut edge, fresh) = match slot.take_for(&target) {
        Some(e) => (e, false),
        None => (dial_edge(&target, ctx).await?, true),
    };
    let first = send_on(&mut edge.sender, Request::from_parts(parts, body.boxed())).await;
    let resp = match (first, again) {
        (Ok(resp), _) => resp,
        (Err(e), Some((method, uri, headers))) if !fresh => {
            tracing::debug!(%target, error = %e, "kept edge connection was closed; sending again on a new one");
            edge = dial_edge(&target, ctx).await?;
            let mut retry = Request::new(empty());
            *retry.method_mut() = method;
            *retry.uri_mut() = uri;
            *retry.headers_mut() = headers;
            send_on(&mut edge.sender, retry)
                .await
                .map_err(|e| unanswered(&edge, &e))?
        }
        (Err(e), _) => return Err(unanswered(&edge, &e)),
    };
    slot.put(edge);
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, body.boxed()))
}

/// Sends one request once the connection is ready for it.
async fn send_on(
    sender: &mut SendRequest<ProxyBody>,
    req: Request<ProxyBody>,
) -> Result<Response<Incoming>, hyper::Error> {
    sender.ready().await?;
    sender.send_request(req).await
}

/// The answer for a request that got no response: the dial's own status
/// when the dial failed, else 502 naming the edge service.
fn unanswered(edge: &EdgeHttp, e: &hyper::Error) -> Response<ProxyBody> {
    let outcome = edge.outcome.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((status, message)) = &outcome.failure {
        return error(*status, message);
    }
    let node = outcome.node.as_deref().unwrap_or("?");
    error(
        502,
        &format!(
            "edge service {} on node {node} did not answer: {e}",
            edge.target
        ),
    )
}

fn empty() -> ProxyBody {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text error naming the cause; the connection closes after it.
fn error(status: u16, message: &str) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: &str, uri: &str) -> Result<String, u16> {
        let m: Method = method.parse().unwrap();
        let u: Uri = uri.parse().unwrap();
        request_target(&m, &u)
            .map(|t| t.to_string())
            .map_err(|e| e.http_status())
    }

    #[test]
    fn absolute_uris_and_connect_name_the_target() {
        assert_eq!(
            target("GET", "http://10.0.0.5:9100/metrics"),
            Ok("10.0.0.5:9100".into())
        );
        assert_eq!(
            target("GET", "http://10.0.0.5/x?y=1"),
            Ok("10.0.0.5:80".into())
        );
        assert_eq!(
            target("POST", "http://[fd00::1]:8080/"),
            Ok("[fd00::1]:8080".into())
        );
        assert_eq!(
            target("GET", "HTTP://edge-1:10255/"),
            Ok("edge-1:10255".into())
        );
        assert_eq!(
            target("CONNECT", "10.0.0.5:10250"),
            Ok("10.0.0.5:10250".into())
        );
    }

    #[test]
    fn other_forms_get_the_spec_statuses() {
        assert_eq!(target("GET", "/metrics"), Err(405));
        assert_eq!(target("OPTIONS", "*"), Err(405));
        assert_eq!(target("GET", "https://10.0.0.5:10250/"), Err(400));
        assert_eq!(target("GET", "http://u:p@10.0.0.5:1/"), Err(400));
        assert_eq!(target("CONNECT", "10.0.0.5"), Err(400));
    }
}
