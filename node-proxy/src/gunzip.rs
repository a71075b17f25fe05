//! Decoding the apiserver's gzip responses before the cache sees them.
//!
//! Cached requests go upstream with `Accept-Encoding: gzip`; kube-apiserver
//! then compresses non-watch responses of 128 KiB and more (feature
//! `APIResponseCompression`, on by default). The hub decodes them here, as
//! the body streams, so the cache records and the local client receives
//! plain JSON exactly as without compression. The decoded size is bounded
//! ([`MAX_DECODED_BODY`]): a small compressed body that expands without end
//! (a decompression bomb) fails with [`GunzipError::TooLarge`] instead of
//! flooding the local client. Corrupt or truncated input is an error, never
//! a panic and never silently short JSON (the gzip trailer's CRC-32 and
//! length are checked).

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use flate2::write::GzDecoder;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, CONTENT_ENCODING, CONTENT_LENGTH};
use prometheus::IntCounter;

/// Most bytes one gzip response may decode to: four times the largest body
/// the cache records (`MAX_RECORDED_BODY`, 64 MiB), which bodies up to that
/// size pass through uncached as before.
pub const MAX_DECODED_BODY: u64 = 256 << 20;

/// Compressed bytes decoded per step. Deflate expands at most ~1032:1, so
/// one step yields at most ~8 MiB: memory stays bounded even for a bomb.
const INPUT_STEP: usize = 8 << 10;

/// Why a gzip body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum GunzipError {
    #[error("corrupt gzip response from the apiserver: {0}")]
    Corrupt(std::io::Error),
    #[error(
        "gzip response from the apiserver decodes to more than {limit} bytes \
         (decompression-bomb limit); not forwarded"
    )]
    TooLarge { limit: u64 },
}

/// A streaming gzip decoder with a bound on the decoded size (sans-IO: bytes
/// in, bytes out).
pub struct Gunzip {
    inner: GzDecoder<Vec<u8>>,
    decoded: u64,
    limit: u64,
    /// Whether any compressed byte arrived (an empty body is an empty body,
    /// as Go's client reads it, not a truncated stream).
    received: bool,
}

impl Gunzip {
    /// A decoder that refuses to produce more than `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            inner: GzDecoder::new(Vec::new()),
            decoded: 0,
            limit,
            received: false,
        }
    }

    /// Decodes the next piece of the compressed stream and returns what it
    /// decoded so far (possibly nothing). Pieces of at most [`INPUT_STEP`]
    /// bytes keep each answer small; larger ones are decoded step by step,
    /// the limit checked after each.
    pub fn push(&mut self, input: &[u8]) -> Result<Bytes, GunzipError> {
        self.received |= !input.is_empty();
        let mut out = Vec::new();
        for step in input.chunks(INPUT_STEP) {
            self.inner.write_all(step).map_err(GunzipError::Corrupt)?;
            self.inner.flush().map_err(GunzipError::Corrupt)?;
            self.take_output(&mut out)?;
        }
        Ok(Bytes::from(out))
    }

    /// Ends the stream: the rest of the output, or an error if the stream
    /// was truncated or its trailer (CRC-32, length) does not match. A body
    /// without any byte is empty, not truncated.
    pub fn finish(mut self) -> Result<Bytes, GunzipError> {
        if !self.received {
            return Ok(Bytes::new());
        }
        self.inner.try_finish().map_err(GunzipError::Corrupt)?;
        let mut out = Vec::new();
        self.take_output(&mut out)?;
        Ok(Bytes::from(out))
    }

    fn take_output(&mut self, out: &mut Vec<u8>) -> Result<(), GunzipError> {
        let produced = std::mem::take(self.inner.get_mut());
        self.decoded = self.decoded.saturating_add(produced.len() as u64);
        if self.decoded > self.limit {
            return Err(GunzipError::TooLarge { limit: self.limit });
        }
        out.extend_from_slice(&produced);
        Ok(())
    }
}

/// How an upstream response body is encoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Encoding {
    /// No `Content-Encoding` (or `identity`): plain bytes.
    Identity,
    /// `Content-Encoding: gzip`.
    Gzip,
    /// Anything else (the hub asked only for gzip): passed through unrecorded.
    Other(String),
}

/// Reads `Content-Encoding`.
pub fn encoding(headers: &HeaderMap) -> Encoding {
    let value: Vec<String> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .flat_map(|v| {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty() && t != "identity")
        .collect();
    match value.as_slice() {
        [] => Encoding::Identity,
        [one] if one == "gzip" || one == "x-gzip" => Encoding::Gzip,
        _ => Encoding::Other(value.join(", ")),
    }
}

/// The headers of a response whose gzip body is sent decoded: no
/// `Content-Encoding`, and no `Content-Length` (it was the compressed length;
/// the decoded body is sent chunked).
pub fn strip_encoding_headers(headers: &mut HeaderMap) {
    headers.remove(CONTENT_ENCODING);
    headers.remove(CONTENT_LENGTH);
}

/// Where a [`GunzipBody`] counts the bytes it received and produced.
#[derive(Clone)]
pub struct GzipCounters {
    pub compressed: IntCounter,
    pub decoded: IntCounter,
}

/// A response body decoded as it streams.
pub struct GunzipBody<B> {
    inner: B,
    decoder: Option<Gunzip>,
    /// Compressed bytes received but not decoded yet.
    pending: Bytes,
    counters: GzipCounters,
}

impl<B> GunzipBody<B> {
    /// Decodes `inner`, refusing more than `limit` decoded bytes.
    pub fn new(inner: B, limit: u64, counters: GzipCounters) -> Self {
        Self {
            inner,
            decoder: Some(Gunzip::new(limit)),
            pending: Bytes::new(),
            counters,
        }
    }

    /// A decoded frame, counted.
    fn decoded(&self, out: Bytes) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.counters.decoded.inc_by(out.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(out))))
    }
}

impl<B> Body for GunzipBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(decoder) = this.decoder.as_mut() else {
                return Poll::Ready(None);
            };
            if !this.pending.is_empty() {
                let step = this.pending.split_to(this.pending.len().min(INPUT_STEP));
                match decoder.push(&step) {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return this.decoded(out),
                    Err(e) => return Poll::Ready(Some(Err(this.fail(e)))),
                }
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers carry nothing the hub forwards; only data is decoded.
                    if let Ok(mut data) = frame.into_data() {
                        this.pending = data.copy_to_bytes(data.remaining());
                        this.counters.compressed.inc_by(this.pending.len() as u64);
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.decoder = None;
                    return Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))));
                }
                Poll::Ready(None) => {
                    let Some(decoder) = this.decoder.take() else {
                        return Poll::Ready(None);
                    };
                    return match decoder.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => this.decoded(out),
                        Err(e) => Poll::Ready(Some(Err(std::io::Error::other(e)))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl<B> GunzipBody<B> {
    /// Ends the body after an error (nothing is decoded after it).
    fn fail(&mut self, e: GunzipError) -> std::io::Error {
        self.decoder = None;
        self.pending = Bytes::new();
        std::io::Error::other(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use http_body_util::{BodyExt, StreamBody};

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn list_json(items: usize) -> Vec<u8> {
        let items: Vec<_> = (0..items)
            .map(|i| serde_json::json!({"metadata": {"name": format!("pod-{i}"), "namespace": "ns"}}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"kind": "PodList", "items": items})).unwrap()
    }

    /// Feeds `compressed` in pieces of `piece` bytes, as a body would arrive.
    fn decode_in_pieces(
        compressed: &[u8],
        piece: usize,
        limit: u64,
    ) -> Result<Vec<u8>, GunzipError> {
        let mut d = Gunzip::new(limit);
        let mut out = Vec::new();
        for p in compressed.chunks(piece) {
            out.extend_from_slice(&d.push(p)?);
        }
        out.extend_from_slice(&d.finish()?);
        Ok(out)
    }

    #[test]
    fn a_good_stream_decodes_whatever_the_piece_size() {
        let plain = list_json(2000);
        let compressed = gzip(&plain);
        assert!(compressed.len() * 5 < plain.len(), "JSON compresses well");
        for piece in [1, 7, 1000, INPUT_STEP + 1, compressed.len()] {
            assert_eq!(
                decode_in_pieces(&compressed, piece, MAX_DECODED_BODY).unwrap(),
                plain
            );
        }
        assert!(decode_in_pieces(&gzip(b""), 3, 0).unwrap().is_empty());
        assert!(
            decode_in_pieces(b"", 3, 0).unwrap().is_empty(),
            "an empty body"
        );
    }

    #[test]
    fn output_comes_as_input_arrives_not_at_the_end() {
        // A watch gzipped with a flush after each event (as a streaming
        // compressor does) must reach the client event by event.
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(b"{\"type\":\"ADDED\"}\n").unwrap();
        e.flush().unwrap();
        let first_len = e.get_ref().len();
        e.write_all(b"{\"type\":\"MODIFIED\"}\n").unwrap();
        let all = e.finish().unwrap();
        let mut d = Gunzip::new(MAX_DECODED_BODY);
        assert_eq!(
            d.push(&all[..first_len]).unwrap(),
            &b"{\"type\":\"ADDED\"}\n"[..]
        );
        assert_eq!(
            d.push(&all[first_len..]).unwrap(),
            &b"{\"type\":\"MODIFIED\"}\n"[..]
        );
        assert!(d.finish().unwrap().is_empty());
    }

    #[test]
    fn corrupt_and_truncated_streams_are_errors() {
        let compressed = gzip(&list_json(200));
        let mut flipped = compressed.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x55;
        let mut bad_crc = compressed.clone();
        let crc_at = bad_crc.len() - 8;
        bad_crc[crc_at] ^= 1;
        let truncated = &compressed[..compressed.len() - 4];
        let header_only = &compressed[..5];
        let mut trailing = compressed.clone();
        trailing.extend_from_slice(b"garbage");
        for (what, input) in [
            ("flipped byte", &flipped[..]),
            ("wrong CRC", &bad_crc[..]),
            ("truncated trailer", truncated),
            ("header only", header_only),
            ("not gzip", &b"{\"kind\":\"PodList\"}"[..]),
            ("data after the end", &trailing[..]),
        ] {
            match decode_in_pieces(input, 100, MAX_DECODED_BODY) {
                Err(GunzipError::Corrupt(_)) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit_with_bounded_output() {
        // 64 MiB of zeros compresses to ~64 KiB.
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 128 << 10, "{}", bomb.len());
        let limit = 4 << 20;
        let mut d = Gunzip::new(limit);
        let mut decoded = 0u64;
        let err = bomb
            .chunks(INPUT_STEP)
            .find_map(|p| match d.push(p) {
                Ok(out) => {
                    decoded += out.len() as u64;
                    None
                }
                Err(e) => Some(e),
            })
            .expect("the bomb must hit the limit");
        assert!(matches!(err, GunzipError::TooLarge { limit: l } if l == limit));
        assert!(
            decoded <= limit,
            "{decoded} bytes handed out past the limit"
        );
        assert!(err.to_string().contains("decompression-bomb limit"));
    }

    fn counters() -> GzipCounters {
        let c = |name: &str| IntCounter::new(name, "test").unwrap();
        GzipCounters {
            compressed: c("compressed"),
            decoded: c("decoded"),
        }
    }

    #[tokio::test]
    async fn the_body_streams_decoded_frames_and_ends_with_errors() {
        let plain = list_json(500);
        let compressed = gzip(&plain);
        let frames = |bytes: Vec<u8>| {
            let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = bytes
                .chunks(3000)
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            StreamBody::new(futures::stream::iter(chunks))
        };
        let counted = counters();
        let body = GunzipBody::new(
            frames(compressed.clone()),
            MAX_DECODED_BODY,
            counted.clone(),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes(), plain);
        assert_eq!(counted.compressed.get(), compressed.len() as u64);
        assert_eq!(counted.decoded.get(), plain.len() as u64);
        let cut = compressed[..compressed.len() / 2].to_vec();
        let err = GunzipBody::new(frames(cut), MAX_DECODED_BODY, counters())
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("corrupt gzip"), "{err}");
        let err = GunzipBody::new(frames(compressed), 1000, counters())
            .collect()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("more than 1000 bytes"), "{err}");
    }

    #[test]
    fn content_encoding_is_read_like_the_apiserver_writes_it() {
        let h = |v: &[&str]| {
            let mut m = HeaderMap::new();
            for v in v {
                m.append(CONTENT_ENCODING, v.parse().unwrap());
            }
            m
        };
        assert_eq!(encoding(&h(&[])), Encoding::Identity);
        assert_eq!(encoding(&h(&["identity"])), Encoding::Identity);
        assert_eq!(encoding(&h(&["gzip"])), Encoding::Gzip);
        assert_eq!(encoding(&h(&[" GZIP "])), Encoding::Gzip);
        assert_eq!(encoding(&h(&["br"])), Encoding::Other("br".into()));
        assert_eq!(
            encoding(&h(&["gzip", "gzip"])),
            Encoding::Other("gzip, gzip".into())
        );
        let mut headers = h(&["gzip"]);
        headers.insert(CONTENT_LENGTH, "10".parse().unwrap());
        strip_encoding_headers(&mut headers);
        assert!(headers.is_empty());
    }
}
