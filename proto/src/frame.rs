//! Byte encoding of [`Message`]s: `type: u8`, `len: u32 BE`, `payload[len]`.
//!
//! Lengths from the wire are checked against [`MAX_FRAME_LEN`] before anything
//! is allocated, every field read is bounds-checked, and payload bytes after
//! the known fields are ignored (room for compatible extensions).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Buf, BufMut, BytesMut};

use crate::message::{
    AgentService, DialErrorKind, DialResult, Hello, HelloAck, Message, OpenStream, RejectReason,
    MAX_CAPABILITIES, MAX_NODE_IPS, MAX_STRING_LEN,
};
use crate::target::{DialTarget, Host};

/// Largest payload accepted or produced. Control frames are small; this bound
/// is what keeps a hostile peer from making us buffer.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
const HEADER_LEN: usize = 5;

const T_HELLO: u8 = 1;
const T_HELLO_ACK: u8 = 2;
const T_OPEN: u8 = 3;
const T_DIAL_RESULT: u8 = 4;
const T_SERVICE: u8 = 5;
const T_LEAVING: u8 = 6;

/// Why bytes could not be decoded into a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame length {len} exceeds the limit of {MAX_FRAME_LEN} bytes")]
    FrameTooLarge { len: usize },
    #[error("frame type {kind} truncated: needed {needed} more bytes for {field}")]
    Truncated {
        kind: u8,
        field: &'static str,
        needed: usize,
    },
    #[error("field {field} is {len} long, limit {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("field {field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("field {field} has invalid value {value}")]
    InvalidValue { field: &'static str, value: u64 },
    #[error("invalid destination: {0}")]
    InvalidTarget(#[from] crate::target::TargetParseError),
}

/// Why a message could not be encoded (a field over its limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("field {field} is {len} long, limit {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
}

/// Appends the encoding of `msg` to `out`.
pub fn encode(msg: &Message, out: &mut BytesMut) -> Result<(), EncodeError> {
    let mut payload = BytesMut::new();
    let kind = match msg {
        Message::Hello(h) => {
            payload.put_u16(h.version);
            put_str(&mut payload, "node_name", &h.node_name)?;
            put_count(&mut payload, "node_ips", h.node_ips.len(), MAX_NODE_IPS)?;
            for ip in &h.node_ips {
                put_ip(&mut payload, ip);
            }
            put_str(&mut payload, "agent_version", &h.agent_version)?;
            put_count(
                &mut payload,
                "capabilities",
                h.capabilities.len(),
                MAX_CAPABILITIES,
            )?;
            for c in &h.capabilities {
                put_str(&mut payload, "capability", c)?;
            }
            T_HELLO
        }
        Message::HelloAck(HelloAck::Accepted {
            server_version,
            reconnect_spread_ms,
        }) => {
            payload.put_u8(0);
            put_str(&mut payload, "server_version", server_version)?;
            payload.put_u32(*reconnect_spread_ms);
            T_HELLO_ACK
        }
        Message::HelloAck(HelloAck::Rejected { reason, message }) => {
            payload.put_u8(1);
            payload.put_u8(reason.to_wire());
            put_str(&mut payload, "message", message)?;
            T_HELLO_ACK
        }
        Message::Open(o) => {
            payload.put_u64(o.stream_id);
            match &o.target.host {
                Host::Ip(ip) => put_ip(&mut payload, ip),
                Host::Name(n) => {
                    payload.put_u8(0);
                    put_str(&mut payload, "host", n)?;
                }
            }
            payload.put_u16(o.target.port);
            T_OPEN
        }
        Message::DialResult(DialResult::Connected) => {
            payload.put_u8(0);
            T_DIAL_RESULT
        }
        Message::DialResult(DialResult::Failed { kind, message }) => {
            payload.put_u8(kind.to_wire());
            put_str(&mut payload, "message", message)?;
            T_DIAL_RESULT
        }
        Message::Service(service) => {
            payload.put_u8(service.to_wire());
            T_SERVICE
        }
        Message::Leaving => T_LEAVING,
        Message::Unknown { kind } => *kind,
    };
    if payload.len() > MAX_FRAME_LEN {
        return Err(EncodeError::FieldTooLong {
            field: "frame",
            len: payload.len(),
            max: MAX_FRAME_LEN,
        });
    }
    out.reserve(HEADER_LEN + payload.len());
    out.put_u8(kind);
    out.put_u32(payload.len() as u32);
    out.put_slice(&payload);
    Ok(())
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more and
/// call again), or the message and how many bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let kind = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::FrameTooLarge { len });
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let mut r = Reader {
        kind,
        buf: &buf[HEADER_LEN..HEADER_LEN + len],
    };
    let msg = match kind {
        T_HELLO => {
            let version = r.u16("version")?;
            let node_name = r.string("node_name")?;
            let n = r.count("node_ips", MAX_NODE_IPS)?;
            let mut node_ips = Vec::with_capacity(n);
            for _ in 0..n {
                node_ips.push(r.ip()?);
            }
            let agent_version = r.string("agent_version")?;
            let n = r.count("capabilities", MAX_CAPABILITIES)?;
            let mut capabilities = Vec::with_capacity(n);
            for _ in 0..n {
                capabilities.push(r.string("capability")?);
            }
            Message::Hello(Hello {
                version,
                node_name,
                node_ips,
                agent_version,
                capabilities,
            })
        }
        T_HELLO_ACK => match r.u8("status")? {
            0 => Message::HelloAck(HelloAck::Accepted {
                server_version: r.string("server_version")?,
                // Added later: absent from older servers' acks.
                reconnect_spread_ms: r.optional_u32("reconnect_spread_ms")?.unwrap_or(0),
            }),
            1 => {
                let reason = RejectReason::from_wire(r.u8("reason")?);
                Message::HelloAck(HelloAck::Rejected {
                    reason,
                    message: r.string("message")?,
                })
            }
            v => {
                return Err(DecodeError::InvalidValue {
                    field: "status",
                    value: v.into(),
                })
            }
        },
        T_OPEN => {
            let stream_id = r.u64("stream_id")?;
            let host = match r.u8("host_kind")? {
                0 => r.string("host")?.parse::<Host>()?,
                4 => Host::Ip(IpAddr::V4(Ipv4Addr::from(r.array::<4>("ipv4")?))),
                6 => Host::Ip(IpAddr::V6(Ipv6Addr::from(r.array::<16>("ipv6")?))),
                v => {
                    return Err(DecodeError::InvalidValue {
                        field: "host_kind",
                        value: v.into(),
                    })
                }
            };
            let port = r.u16("port")?;
            if port == 0 {
                return Err(DecodeError::InvalidValue {
                    field: "port",
                    value: 0,
                });
            }
            Message::Open(OpenStream {
                stream_id,
                target: DialTarget::new(host, port),
            })
        }
        T_DIAL_RESULT => match r.u8("result")? {
            0 => Message::DialResult(DialResult::Connected),
            k => Message::DialResult(DialResult::Failed {
                kind: DialErrorKind::from_wire(k),
                message: r.string("message")?,
            }),
        },
        T_SERVICE => Message::Service(AgentService::from_wire(r.u8("service")?)),
        T_LEAVING => Message::Leaving,
        other => Message::Unknown { kind: other },
    };
    Ok(Some((msg, HEADER_LEN + len)))
}

/// Accumulates bytes from a stream and yields whole frames.
///
/// Holds at most one frame header plus [`MAX_FRAME_LEN`] bytes of payload.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// Creates an empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        match decode(&self.buf)? {
            Some((msg, used)) => {
                self.buf.advance(used);
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }

    /// How many more bytes are worth reading before a frame can complete;
    /// lets the caller read exactly to a frame boundary and leave the rest
    /// of the stream (raw tunneled data) unread.
    pub fn wanted(&self) -> usize {
        if self.buf.len() < HEADER_LEN {
            return HEADER_LEN - self.buf.len();
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        (HEADER_LEN + len.min(MAX_FRAME_LEN)).saturating_sub(self.buf.len())
    }
}

fn put_str(out: &mut BytesMut, field: &'static str, s: &str) -> Result<(), EncodeError> {
    if s.len() > MAX_STRING_LEN {
        return Err(EncodeError::FieldTooLong {
            field,
            len: s.len(),
            max: MAX_STRING_LEN,
        });
    }
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn put_count(
    out: &mut BytesMut,
    field: &'static str,
    n: usize,
    max: usize,
) -> Result<(), EncodeError> {
    if n > max {
        return Err(EncodeError::FieldTooLong { field, len: n, max });
    }
    out.put_u8(n as u8);
    Ok(())
}

fn put_ip(out: &mut BytesMut, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.put_u8(4);
            out.put_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.put_u8(6);
            out.put_slice(&v6.octets());
        }
    }
}

/// Bounds-checked cursor over one frame's payload.
struct Reader<'a> {
    kind: u8,
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                kind: self.kind,
                field,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// A trailing field that older peers do not send: `None` at the end of
    /// the frame, else the field (truncated is still an error).
    fn optional_u32(&mut self, field: &'static str) -> Result<Option<u32>, DecodeError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        self.u32(field).map(Some)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn count(&mut self, field: &'static str, max: usize) -> Result<usize, DecodeError> {
        let n = self.u8(field)? as usize;
        if n > max {
            return Err(DecodeError::FieldTooLong { field, len: n, max });
        }
        Ok(n)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u16(field)? as usize;
        if len > MAX_STRING_LEN {
            return Err(DecodeError::FieldTooLong {
                field,
                len,
                max: MAX_STRING_LEN,
            });
        }
        let bytes = self.take(len, field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    fn ip(&mut self) -> Result<IpAddr, DecodeError> {
        match self.u8("ip_family")? {
            4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>("ipv4")?))),
            6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>("ipv6")?))),
            v => Err(DecodeError::InvalidValue {
                field: "ip_family",
                value: v.into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                version: 1,
                node_name: "edge-1".into(),
                node_ips: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
                agent_version: "0.1.0".into(),
                capabilities: vec!["upstream".into()],
            }),
            Message::HelloAck(HelloAck::Accepted {
                server_version: "0.1.0".into(),
                reconnect_spread_ms: 20_000,
            }),
            Message::HelloAck(HelloAck::Rejected {
                reason: RejectReason::IpNotInCertificate,
                message: "10.9.9.9 is not in the certificate".into(),
            }),
            Message::Open(OpenStream {
                stream_id: 7,
                target: "10.0.0.5:10250".parse().unwrap(),
            }),
            Message::Open(OpenStream {
                stream_id: u64::MAX,
                target: "[fd00::1]:22".parse().unwrap(),
            }),
            Message::Open(OpenStream {
                stream_id: 1,
                target: "kubelet.local:10255".parse().unwrap(),
            }),
            Message::DialResult(DialResult::Connected),
            Message::DialResult(DialResult::Failed {
                kind: DialErrorKind::NotAllowed,
                message: "10.0.0.5:22 is not in --allow".into(),
            }),
            Message::Service(AgentService::Apiserver),
            Message::Service(AgentService::RenewCertificate),
            Message::Service(AgentService::Unknown(77)),
            Message::Leaving,
        ]
    }

    #[test]
    fn service_requests_have_a_fixed_encoding() {
        assert_eq!(
            enc(&Message::Service(AgentService::Apiserver)),
            [T_SERVICE, 0, 0, 0, 1, 1]
        );
        // An empty service frame is truncated, not a panic or a default.
        assert!(matches!(
            decode(&[T_SERVICE, 0, 0, 0, 0]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    fn enc(m: &Message) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode(m, &mut b).unwrap();
        b.to_vec()
    }

    #[test]
    fn round_trips_every_message() {
        for m in samples() {
            let bytes = enc(&m);
            assert_eq!(decode(&bytes).unwrap(), Some((m, bytes.len())));
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete_or_an_error_never_a_panic() {
        for m in samples() {
            let bytes = enc(&m);
            for cut in 0..bytes.len() {
                // A prefix of a frame: header incomplete or payload incomplete.
                assert_eq!(decode(&bytes[..cut]).unwrap(), None, "{m:?} cut at {cut}");
                // The same prefix presented as a *complete* frame (length
                // patched) must be rejected or decoded, but never panic.
                if cut >= HEADER_LEN {
                    let mut lying = bytes[..cut].to_vec();
                    let len = (cut - HEADER_LEN) as u32;
                    lying[1..5].copy_from_slice(&len.to_be_bytes());
                    let _ = decode(&lying);
                }
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let header = [T_OPEN, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode(&header),
            Err(DecodeError::FrameTooLarge { len: 0xffff_ffff })
        );
        let mut d = FrameDecoder::new();
        d.push(&header);
        assert!(d.next_message().is_err());
    }

    #[test]
    fn malformed_fields_are_precise_errors() {
        // Open with host kind 9.
        let bad_kind = [T_OPEN, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1, 9];
        assert!(matches!(
            decode(&bad_kind),
            Err(DecodeError::InvalidValue {
                field: "host_kind",
                ..
            })
        ));
        // Open with a host name that is not a DNS name.
        let mut m = BytesMut::new();
        m.put_u64(1);
        m.put_u8(0);
        m.put_u16(5);
        m.put_slice(b"a b c");
        m.put_u16(80);
        let mut f = vec![T_OPEN];
        f.extend_from_slice(&(m.len() as u32).to_be_bytes());
        f.extend_from_slice(&m);
        assert!(matches!(decode(&f), Err(DecodeError::InvalidTarget(_))));
        // Hello whose string length exceeds the limit.
        let f = [T_HELLO, 0, 0, 0, 4, 0, 1, 0xff, 0xff];
        assert!(matches!(decode(&f), Err(DecodeError::FieldTooLong { .. })));
        // Invalid UTF-8 in node name.
        let f = [T_HELLO, 0, 0, 0, 6, 0, 1, 0, 2, 0xc3, 0x28];
        assert_eq!(
            decode(&f),
            Err(DecodeError::InvalidUtf8 { field: "node_name" })
        );
        // Port 0.
        let f = [
            T_OPEN, 0, 0, 0, 15, 0, 0, 0, 0, 0, 0, 0, 1, 4, 1, 2, 3, 4, 0, 0,
        ];
        assert!(matches!(
            decode(&f),
            Err(DecodeError::InvalidValue { field: "port", .. })
        ));
    }

    #[test]
    fn unknown_types_are_skipped_with_their_payload() {
        let f = [200u8, 0, 0, 0, 3, 1, 2, 3, T_DIAL_RESULT, 0, 0, 0, 1, 0];
        let mut d = FrameDecoder::new();
        d.push(&f);
        assert_eq!(
            d.next_message().unwrap(),
            Some(Message::Unknown { kind: 200 })
        );
        assert_eq!(
            d.next_message().unwrap(),
            Some(Message::DialResult(DialResult::Connected))
        );
        assert_eq!(d.next_message().unwrap(), None);
    }

    #[test]
    fn decoder_wanted_never_reads_past_a_frame() {
        let bytes = enc(&Message::DialResult(DialResult::Connected));
        let mut d = FrameDecoder::new();
        let mut fed = 0;
        while d.next_message().unwrap().is_none() {
            let n = d.wanted();
            assert!(n > 0 && fed + n <= bytes.len());
            d.push(&bytes[fed..fed + n]);
            fed += n;
        }
        assert_eq!(fed, bytes.len());
        assert_eq!(d.wanted(), HEADER_LEN);
    }

    #[test]
    fn pseudo_random_garbage_never_panics() {
        // Deterministic xorshift so the test is reproducible without a dependency.
        let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let len = (s % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|i| (s >> (i % 8 * 8)) as u8).collect();
            if len > 0 {
                buf[0] = (s % 6) as u8; // mostly known types
            }
            if len >= HEADER_LEN {
                let l = (len - HEADER_LEN) as u32;
                buf[1..5].copy_from_slice(&l.to_be_bytes());
            }
            let _ = decode(&buf);
        }
    }

    #[test]
    fn encode_refuses_oversized_fields() {
        let m = Message::Hello(Hello {
            version: 1,
            node_name: "x".repeat(MAX_STRING_LEN + 1),
            node_ips: vec![],
            agent_version: String::new(),
            capabilities: vec![],
        });
        assert!(encode(&m, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn a_hello_ack_without_the_spread_hint_still_decodes() {
        // What servers before the hint sent: status 0 and the version string.
        let mut old = BytesMut::new();
        old.put_u8(T_HELLO_ACK);
        old.put_u32(7);
        old.put_u8(0);
        old.put_u16(4);
        old.put_slice(b"0.1.");
        let (msg, used) = decode(&old).unwrap().unwrap();
        assert_eq!(used, old.len());
        assert_eq!(
            msg,
            Message::HelloAck(HelloAck::Accepted {
                server_version: "0.1.".into(),
                reconnect_spread_ms: 0,
            })
        );
        // A hint cut short is an error, not a zero.
        let mut cut = BytesMut::new();
        cut.put_u8(T_HELLO_ACK);
        cut.put_u32(9);
        cut.put_slice(&old[5..]);
        cut.put_slice(&[0, 1]);
        assert!(matches!(decode(&cut), Err(DecodeError::Truncated { .. })));
    }
}
