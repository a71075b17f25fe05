//! Parsing an HTTP CONNECT request head (pure, no I/O): the front end of
//! tunnel-server's `--uds` and `--proxy-addr` listeners.
//!
//! kube-apiserver sends `CONNECT host:port HTTP/1.1` plus a Host header; any
//! other client must fit the same shape. The head is bounded so an endless
//! header costs at most [`MAX_HEAD`] bytes before it is refused.

use crate::{DialTarget, TargetParseError};

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 32;

/// A complete, valid CONNECT request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Where to tunnel to.
    pub target: DialTarget,
    /// Bytes the head occupied; anything after it is tunnel payload.
    pub head_len: usize,
}

/// Why a request head was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request header exceeds {MAX_HEAD} bytes or {MAX_HEADERS} lines")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("method {0} is not allowed here; use CONNECT host:port")]
    MethodNotAllowed(String),
    #[error("bad CONNECT target: {0}")]
    BadTarget(#[from] TargetParseError),
}

impl HeadError {
    /// The HTTP status to answer with.
    pub fn http_status(&self) -> u16 {
        match self {
            HeadError::TooLarge => 431,
            HeadError::Malformed(_) | HeadError::BadTarget(_) => 400,
            HeadError::MethodNotAllowed(_) => 405,
        }
    }
}

/// Parses the head at the start of `buf`; `Ok(None)` means "read more".
pub fn parse_connect(buf: &[u8]) -> Result<Option<ConnectRequest>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    let head_len = match status {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    if head_len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.unwrap_or_default();
    if method != "CONNECT" {
        return Err(HeadError::MethodNotAllowed(method.to_string()));
    }
    let path = req.path.unwrap_or_default();
    let target: DialTarget = path.parse()?;
    Ok(Some(ConnectRequest { target, head_len }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_kube_apiserver_sends() {
        let head = b"CONNECT 10.0.0.5:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\x16\x03\x01";
        let r = parse_connect(head).unwrap().unwrap();
        assert_eq!(r.target.to_string(), "10.0.0.5:10250");
        assert_eq!(&head[r.head_len..], b"\x16\x03\x01");
    }

    #[test]
    fn partial_heads_ask_for_more() {
        let head = b"CONNECT 10.0.0.5:10250 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        for cut in 0..head.len() {
            assert_eq!(parse_connect(&head[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn statuses_for_bad_requests() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
            (b"CONNECT 10.0.0.5 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT [::1:80 HTTP/1.1\r\n\r\n", 400),
            (b"CONNECT a b c\r\n\r\n", 400),
            (b"\x16\x03\x01\x00\x05hello\r\n\r\n", 400),
        ];
        for (head, status) in cases {
            let e = parse_connect(head).unwrap_err();
            assert_eq!(
                e.http_status(),
                *status,
                "{:?}: {e}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn oversized_heads_are_refused() {
        let mut head = b"CONNECT 10.0.0.5:10250 HTTP/1.1\r\n".to_vec();
        while head.len() < MAX_HEAD {
            head.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(parse_connect(&head), Err(HeadError::TooLarge));
        let mut many = b"CONNECT 10.0.0.5:10250 HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_connect(&many), Err(HeadError::TooLarge));
    }
}
