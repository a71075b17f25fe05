//! The response body type: a whole buffer, a channel of chunks (watch streams), or generated
//! filler (the huge-body fault, streamed without holding it in memory).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Filler chunk size for [`ApiBody::filler`].
const FILL_CHUNK: usize = 64 * 1024;
static FILL: [u8; FILL_CHUNK] = [b'x'; FILL_CHUNK];

/// A response body the fake apiserver sends.
pub enum ApiBody {
    /// One buffer, sent with a Content-Length.
    Full(Option<Bytes>),
    /// Chunks as they are produced; ends when the sender is dropped (chunked encoding).
    Stream(mpsc::Receiver<Bytes>),
    /// `head`, then `fill` filler bytes, then `tail`, sent with a Content-Length.
    Filler {
        head: Option<Bytes>,
        fill: u64,
        tail: Option<Bytes>,
        total: u64,
    },
}

impl ApiBody {
    /// A whole body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }

    /// `total` bytes of syntactically valid JSON (a list with one long padding string), or
    /// plain filler when `total` is too small for the JSON frame.
    pub fn filler(total: u64) -> Self {
        let head: &'static [u8] =
            br#"{"kind":"List","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[],"padding":""#;
        let tail: &'static [u8] = br#""}"#;
        let frame = (head.len() + tail.len()) as u64;
        if total < frame {
            return Self::Filler {
                head: None,
                fill: total,
                tail: None,
                total,
            };
        }
        Self::Filler {
            head: Some(Bytes::from_static(head)),
            fill: total - frame,
            tail: Some(Bytes::from_static(tail)),
            total,
        }
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let data = |b: Bytes| Some(Ok(Frame::data(b)));
        match self.get_mut() {
            Self::Full(buf) => Poll::Ready(buf.take().and_then(data)),
            Self::Stream(rx) => rx.poll_recv(cx).map(|chunk| chunk.and_then(data)),
            Self::Filler {
                head, fill, tail, ..
            } => {
                if let Some(h) = head.take() {
                    return Poll::Ready(data(h));
                }
                if *fill > 0 {
                    let n = usize::try_from(*fill).map_or(FILL_CHUNK, |f| f.min(FILL_CHUNK));
                    *fill -= n as u64;
                    return Poll::Ready(data(Bytes::from_static(&FILL[..n])));
                }
                Poll::Ready(tail.take().and_then(data))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(buf) => buf.is_none(),
            Self::Stream(_) => false,
            Self::Filler {
                head, fill, tail, ..
            } => head.is_none() && *fill == 0 && tail.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) => SizeHint::default(),
            Self::Filler { total, .. } => SizeHint::with_exact(*total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn filler_is_exactly_the_asked_size_and_valid_json() {
        for total in [0u64, 10, 200, 3 * FILL_CHUNK as u64 + 17] {
            let body = ApiBody::filler(total);
            assert_eq!(body.size_hint().exact(), Some(total));
            let bytes = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            assert_eq!(bytes.len() as u64, total);
            if total >= 200 {
                assert!(serde_json::from_slice::<serde_json::Value>(&bytes).is_ok());
            }
        }
    }
}
