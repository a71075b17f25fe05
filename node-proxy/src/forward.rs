//! Turning a client request into an upstream one, and an upstream response
//! into the client's, hop-by-hop headers handled (RFC 9110 §7.6.1).

use hyper::header::{HeaderMap, HeaderValue, ACCEPT, ACCEPT_ENCODING, CONNECTION, UPGRADE};
use hyper::http::request::Parts;
use hyper::{Request, Uri, Version};

use crate::upstream::{Credentials, UpstreamBody};

pub use transport::hop_by_hop::strip_hop_by_hop;

/// The protocol a request asks to switch to (`Connection: upgrade` + `Upgrade: X`).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(UPGRADE).cloned()
    } else {
        None
    }
}

/// Which identity the request goes upstream with: its own token, or the node's certificate.
pub fn credentials(headers: &HeaderMap) -> Credentials {
    if headers.contains_key(hyper::header::AUTHORIZATION) {
        Credentials::OwnToken
    } else {
        Credentials::NodeCertificate
    }
}

/// The upstream request: origin-form URI, HTTP/1.1, hop-by-hop headers dropped
/// (the upgrade re-added). Cached requests ask for JSON (`Accept:
/// application/json`: the cache reads JSON, and decoding Kubernetes protobuf
/// would need the whole generated schema) compressed with gzip
/// (`Accept-Encoding: gzip`; the hub decodes it, `gunzip.rs`), whatever the
/// client asked. Uncached requests keep the client's `Accept` (protobuf goes
/// through as is) and `Accept-Encoding`.
pub fn upstream_request(
    mut parts: Parts,
    body: UpstreamBody,
    path_and_query: &str,
    cached: bool,
) -> Result<Request<UpstreamBody>, hyper::http::Error> {
    let upgrade = requested_upgrade(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    if let Some(proto) = upgrade {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        parts.headers.insert(UPGRADE, proto);
    }
    if cached {
        parts
            .headers
            .insert(ACCEPT, HeaderValue::from_static("application/json"));
        parts
            .headers
            .insert(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let mut req = Request::builder()
        .method(parts.method)
        .uri(path_and_query.parse::<Uri>()?)
        .version(Version::HTTP_11)
        .body(body)?;
    *req.headers_mut() = parts.headers;
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::get("http://127.0.0.1:10261/api/v1/pods?watch=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn empty() -> UpstreamBody {
        Empty::new().map_err(|never| match never {}).boxed()
    }

    #[test]
    fn cached_requests_ask_for_gzip_json() {
        for client_encoding in [None, Some("br"), Some("gzip, deflate")] {
            let mut h = vec![
                ("accept", "application/vnd.kubernetes.protobuf"),
                ("user-agent", "kubelet/v1.30"),
            ];
            h.extend(client_encoding.map(|e| ("accept-encoding", e)));
            let r = upstream_request(parts(&h), empty(), "/api/v1/pods?watch=1", true).unwrap();
            assert_eq!(r.uri(), "/api/v1/pods?watch=1");
            assert_eq!(r.headers()[ACCEPT], "application/json");
            assert_eq!(r.headers()[ACCEPT_ENCODING], "gzip", "{client_encoding:?}");
            assert_eq!(r.headers()["user-agent"], "kubelet/v1.30");
        }
    }

    #[test]
    fn uncached_requests_keep_their_headers_minus_hop_by_hop() {
        let p = parts(&[
            ("accept", "application/vnd.kubernetes.protobuf"),
            ("accept-encoding", "br"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
        ]);
        let r = upstream_request(p, empty(), "/api", false).unwrap();
        assert_eq!(r.headers()[ACCEPT], "application/vnd.kubernetes.protobuf");
        assert_eq!(r.headers()[ACCEPT_ENCODING], "br");
        for h in ["connection", "x-private", "keep-alive"] {
            assert!(!r.headers().contains_key(h), "{h} forwarded");
        }
    }

    #[test]
    fn upgrades_survive_and_credentials_are_chosen() {
        let p = parts(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("authorization", "Bearer t"),
        ]);
        assert_eq!(credentials(&p.headers), Credentials::OwnToken);
        assert!(requested_upgrade(&p.headers).is_some());
        let r = upstream_request(p, empty(), "/exec", false).unwrap();
        assert_eq!(r.headers()[UPGRADE], "SPDY/3.1");
        assert_eq!(r.headers()[CONNECTION], "Upgrade");
        assert_eq!(r.headers()["authorization"], "Bearer t");
        assert_eq!(
            credentials(&parts(&[]).headers),
            Credentials::NodeCertificate
        );
        assert!(requested_upgrade(&parts(&[("upgrade", "x")]).headers).is_none());
    }
}
