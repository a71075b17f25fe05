//! Telling the front end's protocols apart by their first bytes (pure).
//!
//! One socket serves both kube-apiserver egress modes: HTTP CONNECT starts
//! with a request line, Konnectivity gRPC with the HTTP/2 client preface.

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// The full HTTP/2 preface: serve gRPC.
    Http2,
    /// Anything else: the HTTP/1 CONNECT path (which answers errors itself).
    Http1,
    /// Still a prefix of the preface: read more.
    NeedMore,
}

/// Classifies the bytes read so far.
pub fn sniff(first: &[u8]) -> Sniffed {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Sniffed::Http1
    } else if n == H2_PREFACE.len() {
        Sniffed::Http2
    } else {
        Sniffed::NeedMore
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preface_prefixes_need_more_and_the_full_preface_is_http2() {
        assert_eq!(sniff(b""), Sniffed::NeedMore);
        for cut in 1..H2_PREFACE.len() {
            assert_eq!(sniff(&H2_PREFACE[..cut]), Sniffed::NeedMore, "{cut}");
        }
        assert_eq!(sniff(H2_PREFACE), Sniffed::Http2);
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(&[0, 0, 0, 4]);
        assert_eq!(sniff(&more), Sniffed::Http2);
    }

    #[test]
    fn everything_else_is_http1() {
        assert_eq!(
            sniff(b"CONNECT 10.0.0.5:10250 HTTP/1.1\r\n"),
            Sniffed::Http1
        );
        assert_eq!(sniff(b"C"), Sniffed::Http1);
        assert_eq!(sniff(b"PRI * HTTP/1.1\r\n"), Sniffed::Http1);
        assert_eq!(sniff(b"\x16\x03\x01"), Sniffed::Http1);
    }
}
