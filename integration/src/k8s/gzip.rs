//! Response compression as kube-apiserver does it (feature `APIResponseCompression`, on by
//! default): a resource request that is not a watch, whose client sent `Accept-Encoding:
//! gzip`, gets a gzip body when the serialized object is larger than 128 KiB
//! (`responsewriters.defaultGzipThresholdBytes`, compared with `>` to the first write, i.e.
//! the whole object), compressed at level 1 (`defaultGzipContentEncodingLevel`), with
//! `Content-Encoding: gzip` and `Vary: Accept-Encoding`.

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use hyper::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, VARY};
use hyper::Response;

use super::body::ApiBody;

/// Bodies larger than this are compressed (kube-apiserver's `defaultGzipThresholdBytes`).
pub const DEFAULT_GZIP_THRESHOLD_BYTES: usize = 128 * 1024;

/// kube-apiserver's `defaultGzipContentEncodingLevel`.
const DEFAULT_GZIP_CONTENT_ENCODING_LEVEL: u32 = 1;

/// The client accepts gzip: an `Accept-Encoding` token `gzip` without `q=0`.
pub fn wants_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| {
            let mut parts = token.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            coding.eq_ignore_ascii_case("gzip") && !refused
        })
}

/// Compresses `resp` if its whole body is larger than the threshold; says whether it did.
/// Streamed bodies (watches) and generated filler are left alone.
pub fn compress_large(resp: Response<ApiBody>) -> (Response<ApiBody>, bool) {
    let (mut parts, body) = resp.into_parts();
    let bytes = match body {
        ApiBody::Full(Some(b)) if b.len() > DEFAULT_GZIP_THRESHOLD_BYTES => b,
        other => return (Response::from_parts(parts, other), false),
    };
    let level = Compression::new(DEFAULT_GZIP_CONTENT_ENCODING_LEVEL);
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 4), level);
    let compressed = match encoder.write_all(&bytes).and_then(|()| encoder.finish()) {
        Ok(c) => c,
        // Writing into a Vec cannot fail; should it, the plain body is still right.
        Err(_) => {
            return (
                Response::from_parts(parts, ApiBody::Full(Some(bytes))),
                false,
            )
        }
    };
    parts
        .headers
        .insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    parts
        .headers
        .append(VARY, HeaderValue::from_static("Accept-Encoding"));
    (Response::from_parts(parts, ApiBody::full(compressed)), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_ENCODING, v.parse().unwrap());
        h
    }

    #[test]
    fn gzip_is_wanted_only_when_asked() {
        assert!(wants_gzip(&accept("gzip")));
        assert!(wants_gzip(&accept("deflate, GZIP;q=0.5")));
        assert!(!wants_gzip(&accept("gzip;q=0")));
        assert!(!wants_gzip(&accept("br")));
        assert!(!wants_gzip(&HeaderMap::new()));
    }

    #[test]
    fn only_bodies_above_the_threshold_are_compressed() {
        let at = vec![b'a'; DEFAULT_GZIP_THRESHOLD_BYTES];
        let (resp, done) = compress_large(Response::new(ApiBody::full(at)));
        assert!(!done && !resp.headers().contains_key(CONTENT_ENCODING));
        let above = vec![b'a'; DEFAULT_GZIP_THRESHOLD_BYTES + 1];
        let (resp, done) = compress_large(Response::new(ApiBody::full(above.clone())));
        assert!(done);
        assert_eq!(resp.headers()[CONTENT_ENCODING], "gzip");
        let ApiBody::Full(Some(compressed)) = resp.into_body() else {
            panic!("not a whole body")
        };
        let mut plain = Vec::new();
        GzDecoder::new(&compressed[..])
            .read_to_end(&mut plain)
            .unwrap();
        assert_eq!(plain, above);
    }
}
