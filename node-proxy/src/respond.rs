//! Building the hub's own responses: Kubernetes `Status` errors, cache
//! answers, held watches, and the channel-fed body used to stream.

use std::time::Duration;

use autonomy_cache::status_json;
use bytes::Bytes;
use futures::channel::mpsc;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::sync::watch;

use crate::health::Reachability;

/// Body of every response the hub sends to its clients.
pub type HubBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// Sending half of a streamed body: `Err` aborts the client's response.
pub type BodySender = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

/// How long a held watch lasts when the client gave no `timeoutSeconds`
/// (kube-apiserver's default `--min-request-timeout` is 1800 s).
pub const DEFAULT_HELD_WATCH: Duration = Duration::from_secs(1800);

/// A JSON response with `body`.
pub fn json(status: u16, body: Bytes) -> Response<HubBody> {
    let mut r = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A Kubernetes `Status` error, so client-go prints it well.
pub fn status(code: u16, reason: &str, message: &str) -> Response<HubBody> {
    json(code, status_json(code, reason, message))
}

/// The 503 for requests that cannot be answered while the cloud is unreachable.
pub fn offline_unavailable(what: &str) -> Response<HubBody> {
    status(
        503,
        "ServiceUnavailable",
        &format!("the node proxy is in offline mode (cloud unreachable) and cannot answer {what}"),
    )
}

/// A streamed body and the sender that feeds it (small buffer: backpressure
/// reaches the upstream connection instead of piling up in memory).
pub fn channel_body() -> (BodySender, HubBody) {
    let (tx, rx) = mpsc::channel(2);
    (tx, BodyExt::boxed(StreamBody::new(rx)))
}

/// A watch answered with no events: 200, chunked, open until the client's
/// `timeoutSeconds` passes or the cloud is reachable again, then closed so
/// the client re-lists.
pub fn held_watch(
    timeout_seconds: Option<u64>,
    mut reachability: watch::Receiver<Reachability>,
) -> Response<HubBody> {
    let (tx, body) = channel_body();
    let limit = timeout_seconds
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_HELD_WATCH);
    tokio::spawn(async move {
        let online = reachability.wait_for(|r| r.forwards());
        // A client that left early costs this task until then (bounded by the timeout).
        let _ = tokio::time::timeout(limit, online).await;
        drop(tx);
    });
    let mut r = Response::new(body);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Forwards frames from a stream into `tx` until it ends; used by tests and pumps.
pub async fn send_data(tx: &mut BodySender, data: Bytes) -> bool {
    futures::SinkExt::send(tx, Ok(Frame::data(data)))
        .await
        .is_ok()
}

/// Reads a whole small body (request bodies of offline writes), refusing more than `max` bytes.
pub async fn read_bounded<B>(body: B, max: usize) -> Result<Bytes, String>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut out = Vec::new();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the request body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(format!("request body larger than {max} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn held_watch_closes_when_online_returns() {
        let (tx, rx) = watch::channel(Reachability::Offline);
        let resp = held_watch(Some(3600), rx);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body();
        let collect = tokio::spawn(async move { body.collect().await.map(|b| b.to_bytes()) });
        tokio::task::yield_now().await;
        assert!(!collect.is_finished());
        tx.send_replace(Reachability::Online);
        let bytes = collect.await.unwrap().unwrap();
        assert!(bytes.is_empty(), "a held watch sends no events");
    }

    #[tokio::test]
    async fn held_watch_closes_at_the_client_timeout() {
        let (_tx, rx) = watch::channel(Reachability::Offline);
        let body = held_watch(Some(0), rx).into_body();
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }

    #[tokio::test]
    async fn bounded_read_refuses_large_bodies() {
        let small = Full::new(Bytes::from_static(b"{}"));
        assert_eq!(read_bounded(small, 10).await.unwrap(), "{}");
        let big = Full::new(Bytes::from(vec![b'x'; 11]));
        assert!(read_bounded(big, 10).await.unwrap_err().contains("larger"));
    }
}
