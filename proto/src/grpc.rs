//! gRPC message framing (length-prefixed messages on an HTTP/2 stream),
//! sans-IO: bytes in, whole messages out.
//!
//! Each message is `compressed: u8`, `len: u32 BE`, `message[len]`. The
//! decoder refuses a length over its limit before buffering the message, so a
//! peer cannot make it hold more than one limit's worth of bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the prefix before every message.
pub const PREFIX_LEN: usize = 5;

/// Why the byte stream is not valid gRPC framing for us.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrpcFrameError {
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("compressed messages are not supported (no grpc-encoding was negotiated)")]
    Compressed,
    #[error("invalid compressed-flag byte {0}")]
    BadFlag(u8),
    #[error("stream ended inside a message ({0} bytes buffered)")]
    Truncated(usize),
}

impl GrpcFrameError {
    /// The grpc-status to end the call with.
    pub fn grpc_status(&self) -> u32 {
        match self {
            GrpcFrameError::TooLarge { .. } => crate::grpc::status::RESOURCE_EXHAUSTED,
            _ => crate::grpc::status::INTERNAL,
        }
    }
}

/// The grpc-status codes this project answers with.
pub mod status {
    /// The call completed (dial failures are reported in-band, so they end OK too).
    pub const OK: u32 = 0;
    /// The client went away (recorded in metrics; nothing is sent).
    pub const CANCELLED: u32 = 1;
    /// The client broke the protocol (e.g. DATA for another connectID).
    pub const INVALID_ARGUMENT: u32 = 3;
    /// No DIAL_REQ within `--header-timeout`, or a message stalled half-sent.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// The TLS client certificate may not use the front end.
    pub const PERMISSION_DENIED: u32 = 7;
    /// A message over the size limit.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// A method other than `/ProxyService/Proxy`.
    pub const UNIMPLEMENTED: u32 = 12;
    /// Undecodable input (malformed Packet, compressed message, bad framing).
    pub const INTERNAL: u32 = 13;
}

/// Prefixes one message for sending.
pub fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX_LEN + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.extend_from_slice(message);
    out.freeze()
}

/// Reassembles messages from arbitrary chunks of an HTTP/2 stream.
#[derive(Debug)]
pub struct MessageDecoder {
    buf: BytesMut,
    max: usize,
}

impl MessageDecoder {
    /// A decoder that accepts messages up to `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes held that are not yet a whole message.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The length announced by the prefix of the message being received,
    /// once its prefix is complete.
    pub fn pending_len(&self) -> Option<usize> {
        let p = self.buf.get(..PREFIX_LEN)?;
        Some(u32::from_be_bytes([p[1], p[2], p[3], p[4]]) as usize)
    }

    /// The next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, GrpcFrameError> {
        if self.buf.len() < PREFIX_LEN {
            return Ok(None);
        }
        match self.buf[0] {
            0 => {}
            1 => return Err(GrpcFrameError::Compressed),
            b => return Err(GrpcFrameError::BadFlag(b)),
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max {
            return Err(GrpcFrameError::TooLarge { len, max: self.max });
        }
        // The buffer grows with the bytes that arrive, never ahead of them
        // on the strength of a length from the wire.
        if self.buf.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        self.buf.advance(PREFIX_LEN);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Checks the stream ended on a message boundary.
    pub fn finish(&self) -> Result<(), GrpcFrameError> {
        match self.buf.len() {
            0 => Ok(()),
            n => Err(GrpcFrameError::Truncated(n)),
        }
    }
}

/// Percent-encodes a `grpc-message` trailer value as the gRPC spec asks
/// (printable ASCII except `%` as is, everything else as `%XX` of UTF-8).
pub fn encode_grpc_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for &b in msg.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_reassembled_from_any_split() {
        let mut wire = frame(b"hello").to_vec();
        wire.extend_from_slice(&frame(b""));
        wire.extend_from_slice(&frame(&[7u8; 300]));
        for step in 1..wire.len() {
            let mut d = MessageDecoder::new(1024);
            let mut got = Vec::new();
            for chunk in wire.chunks(step) {
                d.push(chunk);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got.len(), 3, "step {step}");
            assert_eq!(&got[0][..], b"hello");
            assert!(got[1].is_empty());
            assert_eq!(got[2].len(), 300);
            d.finish().unwrap();
        }
    }

    #[test]
    fn oversized_compressed_and_truncated_are_refused() {
        let mut d = MessageDecoder::new(10);
        d.push(&[0, 0, 0, 0, 11]);
        assert_eq!(
            d.next_message(),
            Err(GrpcFrameError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(
            GrpcFrameError::TooLarge { len: 11, max: 10 }.grpc_status(),
            status::RESOURCE_EXHAUSTED
        );
        let mut d = MessageDecoder::new(10);
        d.push(&[1, 0, 0, 0, 1, 0]);
        assert_eq!(d.next_message(), Err(GrpcFrameError::Compressed));
        let mut d = MessageDecoder::new(10);
        d.push(&[0, 0, 0, 0, 5, 1]);
        assert_eq!(d.next_message(), Ok(None));
        assert_eq!(d.finish(), Err(GrpcFrameError::Truncated(6)));
        // A huge announced length is refused without allocating it.
        let mut d = MessageDecoder::new(4 << 20);
        d.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_message().is_err());
    }

    #[test]
    fn the_pending_length_is_known_once_the_prefix_is() {
        let mut d = MessageDecoder::new(4 << 20);
        d.push(&[0, 0, 0x40]);
        assert_eq!(d.pending_len(), None);
        d.push(&[0, 0, 1, 2, 3]);
        assert_eq!(d.next_message(), Ok(None));
        assert_eq!(d.pending_len(), Some(0x40_0000));
        assert_eq!(d.buffered(), 8);
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(encode_grpc_message("a b%c\n☃"), "a b%25c%0A%E2%98%83");
    }
}
