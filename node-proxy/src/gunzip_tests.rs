//! In-process: gzip on the hub's real response path. Cached components get
//! decoded JSON and the cache records it; a corrupt gzip body ends the
//! client's response with an error and nothing is cached; uncached clients
//! get the apiserver's compressed bytes untouched.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::GzEncoder;
use flate2::Compression;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{ACCEPT_ENCODING, CONTENT_ENCODING};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::settings::FilterSettings;
use crate::test_hub::{self, FakeBody};

const KUBELET: &str = "kubelet/v1.30.0 (linux/amd64) kubernetes/abc";
const LIST: &str = "/api/v1/namespaces/ns/configmaps";
const CORRUPT: &str = "/api/v1/namespaces/bad/configmaps";

fn plain_list(namespace: &str) -> Vec<u8> {
    let items: Vec<_> = (0..300)
        .map(|i| {
            serde_json::json!({"metadata": {"name": format!("cm-{i}"), "namespace": namespace,
                "resourceVersion": (i + 2).to_string()}, "data": {"k": "v".repeat(200)}})
        })
        .collect();
    serde_json::to_vec(
        &serde_json::json!({"kind": "ConfigMapList", "apiVersion": "v1",
        "metadata": {"resourceVersion": "400"}, "items": items}),
    )
    .unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Gzips whenever asked, as kube-apiserver does for large responses; the
/// corrupt path answers gzip whose middle is damaged.
async fn apiserver(req: Request<hyper::body::Incoming>) -> Response<FakeBody> {
    let asked = req
        .headers()
        .get(ACCEPT_ENCODING)
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let namespace = if req.uri().path() == CORRUPT {
        "bad"
    } else {
        "ns"
    };
    let mut body = plain_list(namespace);
    if req.uri().path() == CORRUPT {
        body = gzip(&body);
        let middle = body.len() / 2;
        body[middle] ^= 0xff;
    } else if asked {
        body = gzip(&body);
    }
    let mut resp = Response::builder().header("content-type", "application/json");
    if asked || req.uri().path() == CORRUPT {
        resp = resp.header(CONTENT_ENCODING, "gzip");
    }
    resp.body(Full::new(Bytes::from(body)).boxed()).unwrap()
}

/// GET through the hub as `agent`, asking for `encoding`: the response head
/// and the body (or the error that ended it).
async fn get(
    hub: SocketAddr,
    agent: &str,
    encoding: Option<&str>,
    target: &str,
) -> (hyper::http::response::Parts, Result<Bytes, String>) {
    let tcp = tokio::net::TcpStream::connect(hub).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(target)
        .header("host", "hub")
        .header("user-agent", agent);
    if let Some(e) = encoding {
        req = req.header(ACCEPT_ENCODING, e);
    }
    let limit = Duration::from_secs(10);
    let resp = tokio::time::timeout(
        limit,
        send.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(limit, body.collect())
        .await
        .unwrap()
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    (parts, body)
}

#[tokio::test]
async fn gzip_is_decoded_for_cached_clients_and_kept_for_others() {
    let dir = tempfile::tempdir().unwrap();
    test_hub::pki(dir.path());
    let upstream = test_hub::fake_apiserver(dir.path(), apiserver).await;
    let (hub, state) =
        test_hub::hub(dir.path(), upstream, "kubelet", FilterSettings::default()).await;
    let plain = plain_list("ns");

    for asked in [None, Some("gzip")] {
        let (head, body) = get(hub, KUBELET, asked, LIST).await;
        assert_eq!(head.status, 200);
        assert!(!head.headers.contains_key(CONTENT_ENCODING), "{asked:?}");
        assert_eq!(body.unwrap(), plain, "{asked:?}: decoded JSON");
    }
    let gzip_bytes = |side: &str| {
        state
            .metrics
            .hub_gzip_bytes
            .with_label_values(&[side])
            .get()
    };
    assert_eq!(gzip_bytes("decoded"), 2 * plain.len() as u64);
    assert_eq!(gzip_bytes("compressed"), 2 * gzip(&plain).len() as u64);
    let stored = state
        .cache
        .stored_object("kubelet", ("", "v1", "configmaps"), "ns", "cm-7")
        .unwrap()
        .expect("the decoded list was recorded");
    let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored["metadata"]["name"], "cm-7");

    // Corrupt gzip: the body ends with an error, nothing is cached.
    let (head, body) = get(hub, KUBELET, None, CORRUPT).await;
    assert_eq!(head.status, 200);
    assert!(body.is_err(), "a corrupt body must not end cleanly");
    let none = state
        .cache
        .stored_object("kubelet", ("", "v1", "configmaps"), "bad", "cm-7")
        .unwrap();
    assert!(none.is_none(), "a corrupt response was cached");

    // An uncached client gets what it asked for, as the apiserver sent it.
    let (head, body) = get(hub, "curl/8.5", Some("gzip"), LIST).await;
    assert_eq!(head.headers[CONTENT_ENCODING], "gzip");
    assert_eq!(body.unwrap(), gzip(&plain));
}
