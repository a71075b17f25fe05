//! Konnectivity's `Packet` (kube-apiserver's gRPC egress protocol) as plain
//! data, with a small hand-written protobuf codec.
//!
//! The message set is eight tiny messages; a hand-written codec keeps the
//! crate sans-IO and dependency-free, and makes the protobuf rules that
//! matter for interoperability explicit: proto3 omits default values, a oneof
//! submessage is written even when empty, decoders accept fields in any order
//! and skip unknown ones, and `int64` values may be negative (10-byte varints).
//! Decoding never panics and never allocates more than its input.

use bytes::{BufMut, Bytes, BytesMut};

/// `PacketType` values on the wire.
pub mod packet_type {
    /// Client → server: dial a destination.
    pub const DIAL_REQ: u64 = 0;
    /// Server → client: the dial's result.
    pub const DIAL_RSP: u64 = 1;
    /// Client → server: close the connection.
    pub const CLOSE_REQ: u64 = 2;
    /// Server → client: the connection is closed.
    pub const CLOSE_RSP: u64 = 3;
    /// Payload, either way.
    pub const DATA: u64 = 4;
    /// Client → server: cancel a pending dial (newer clients only).
    pub const DIAL_CLS: u64 = 5;
    /// Server → client: the proxy is draining (newer servers only).
    pub const DRAIN: u64 = 6;
}

// Field numbers of `Packet`'s oneof payload.
const F_TYPE: u32 = 1;
const F_DIAL_REQUEST: u32 = 2;
const F_DIAL_RESPONSE: u32 = 3;
const F_DATA: u32 = 4;
const F_CLOSE_REQUEST: u32 = 5;
const F_CLOSE_RESPONSE: u32 = 6;
const F_CLOSE_DIAL: u32 = 7;
const F_DRAIN: u32 = 8;

const WT_VARINT: u8 = 0;
const WT_I64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_I32: u8 = 5;

/// One konnectivity `Packet`. Field names follow the proto.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client asks for a connection to `address` ("host:port").
    DialRequest {
        protocol: String,
        address: String,
        random: i64,
    },
    /// Server's answer: a `connect_id` on success, or a non-empty `error`.
    DialResponse {
        error: String,
        connect_id: i64,
        random: i64,
    },
    /// Client closes the connection.
    CloseRequest { connect_id: i64 },
    /// Server confirms a close (or reports the edge side closed first).
    CloseResponse { error: String, connect_id: i64 },
    /// Payload bytes in either direction.
    Data {
        connect_id: i64,
        error: String,
        data: Bytes,
    },
    /// Client cancels the pending dial it identified with `random`.
    DialClose { random: i64 },
    /// Proxy is draining (sent by servers of newer versions; carries nothing).
    Drain,
    /// A packet type this code does not know; callers log and ignore it.
    Unknown { packet_type: u64 },
}

impl Packet {
    /// Name of the packet type, for logs.
    pub fn type_name(&self) -> &'static str {
        match self {
            Packet::DialRequest { .. } => "DIAL_REQ",
            Packet::DialResponse { .. } => "DIAL_RSP",
            Packet::CloseRequest { .. } => "CLOSE_REQ",
            Packet::CloseResponse { .. } => "CLOSE_RSP",
            Packet::Data { .. } => "DATA",
            Packet::DialClose { .. } => "DIAL_CLS",
            Packet::Drain => "DRAIN",
            Packet::Unknown { .. } => "unknown",
        }
    }
}

/// Why bytes are not a valid `Packet`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    #[error("varint longer than 10 bytes")]
    VarintTooLong,
    #[error("field number 0 is invalid")]
    FieldZero,
    #[error("unsupported wire type {wire_type} (field {field})")]
    WireType { field: u32, wire_type: u8 },
    #[error("field {field} of {message} is not valid UTF-8")]
    InvalidUtf8 {
        message: &'static str,
        field: &'static str,
    },
}

/// Encodes a packet as protobuf bytes.
pub fn encode(packet: &Packet) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + payload_hint(packet));
    let (ptype, field, body) = match packet {
        Packet::DialRequest {
            protocol,
            address,
            random,
        } => {
            let mut b = BytesMut::new();
            put_string(&mut b, 1, protocol);
            put_string(&mut b, 2, address);
            put_int64(&mut b, 3, *random);
            (packet_type::DIAL_REQ, F_DIAL_REQUEST, b)
        }
        Packet::DialResponse {
            error,
            connect_id,
            random,
        } => {
            let mut b = BytesMut::new();
            put_string(&mut b, 1, error);
            put_int64(&mut b, 2, *connect_id);
            put_int64(&mut b, 3, *random);
            (packet_type::DIAL_RSP, F_DIAL_RESPONSE, b)
        }
        Packet::CloseRequest { connect_id } => {
            let mut b = BytesMut::new();
            put_int64(&mut b, 1, *connect_id);
            (packet_type::CLOSE_REQ, F_CLOSE_REQUEST, b)
        }
        Packet::CloseResponse { error, connect_id } => {
            let mut b = BytesMut::new();
            put_string(&mut b, 1, error);
            put_int64(&mut b, 2, *connect_id);
            (packet_type::CLOSE_RSP, F_CLOSE_RESPONSE, b)
        }
        Packet::Data {
            connect_id,
            error,
            data,
        } => {
            let mut b = BytesMut::with_capacity(data.len() + 24);
            put_int64(&mut b, 1, *connect_id);
            put_string(&mut b, 2, error);
            put_bytes(&mut b, 3, data);
            (packet_type::DATA, F_DATA, b)
        }
        Packet::DialClose { random } => {
            let mut b = BytesMut::new();
            put_int64(&mut b, 1, *random);
            (packet_type::DIAL_CLS, F_CLOSE_DIAL, b)
        }
        Packet::Drain => (packet_type::DRAIN, F_DRAIN, BytesMut::new()),
        // Nothing sensible to say about a type we do not know: type only.
        Packet::Unknown { packet_type } => {
            put_varint_field(&mut out, F_TYPE, *packet_type);
            return out.freeze();
        }
    };
    put_varint_field(&mut out, F_TYPE, ptype);
    // A oneof member is written even when it is empty.
    put_key(&mut out, field, WT_LEN);
    put_varint(&mut out, body.len() as u64);
    out.extend_from_slice(&body);
    out.freeze()
}

fn payload_hint(p: &Packet) -> usize {
    match p {
        Packet::Data { data, .. } => data.len() + 24,
        _ => 32,
    }
}

/// Decodes protobuf bytes into a packet. `Bytes` in, so DATA payloads are
/// slices of the input (no copy).
pub fn decode(buf: &Bytes) -> Result<Packet, PacketError> {
    let mut r = Reader::new(buf);
    let mut ptype = packet_type::DIAL_REQ;
    // The last occurrence of the payload field that matches the type wins
    // (proto3 merge semantics for a oneof); the type may come after it.
    let mut payloads: [Option<Bytes>; 9] = Default::default();
    while let Some((field, wt)) = r.key()? {
        match (field, wt) {
            (F_TYPE, WT_VARINT) => ptype = r.varint()?,
            (F_DIAL_REQUEST..=F_DRAIN, WT_LEN) => {
                let body = r.len_delimited()?;
                payloads[field as usize] = Some(buf.slice_ref(body));
            }
            (F_TYPE..=F_DRAIN, _) => {
                return Err(PacketError::WireType {
                    field,
                    wire_type: wt,
                })
            }
            _ => r.skip(field, wt)?,
        }
    }
    let mut take = |f: u32| payloads[f as usize].take().unwrap_or_default();
    Ok(match ptype {
        packet_type::DIAL_REQ => {
            let b = take(F_DIAL_REQUEST);
            let mut m = Fields::default();
            m.parse(&b, "DialRequest", &[(1, S), (2, S), (3, I)])?;
            Packet::DialRequest {
                protocol: m.string(1),
                address: m.string(2),
                random: m.int(3),
            }
        }
        packet_type::DIAL_RSP => {
            let b = take(F_DIAL_RESPONSE);
            let mut m = Fields::default();
            m.parse(&b, "DialResponse", &[(1, S), (2, I), (3, I)])?;
            Packet::DialResponse {
                error: m.string(1),
                connect_id: m.int(2),
                random: m.int(3),
            }
        }
        packet_type::CLOSE_REQ => {
            let b = take(F_CLOSE_REQUEST);
            let mut m = Fields::default();
            m.parse(&b, "CloseRequest", &[(1, I)])?;
            Packet::CloseRequest {
                connect_id: m.int(1),
            }
        }
        packet_type::CLOSE_RSP => {
            let b = take(F_CLOSE_RESPONSE);
            let mut m = Fields::default();
            m.parse(&b, "CloseResponse", &[(1, S), (2, I)])?;
            Packet::CloseResponse {
                error: m.string(1),
                connect_id: m.int(2),
            }
        }
        packet_type::DATA => {
            let b = take(F_DATA);
            let mut m = Fields::default();
            m.parse(&b, "Data", &[(1, I), (2, S), (3, B)])?;
            Packet::Data {
                connect_id: m.int(1),
                error: m.string(2),
                data: m.bytes(3),
            }
        }
        packet_type::DIAL_CLS => {
            let b = take(F_CLOSE_DIAL);
            let mut m = Fields::default();
            m.parse(&b, "CloseDial", &[(1, I)])?;
            Packet::DialClose { random: m.int(1) }
        }
        packet_type::DRAIN => Packet::Drain,
        other => Packet::Unknown { packet_type: other },
    })
}

/// The kinds of field the konnectivity messages use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// string (must be UTF-8)
    Str,
    /// int64
    Int,
    /// bytes
    Raw,
}
const S: Kind = Kind::Str;
const I: Kind = Kind::Int;
const B: Kind = Kind::Raw;

/// Decoded fields of one submessage, by field number (all are 1..=3).
#[derive(Default)]
struct Fields {
    ints: [i64; 4],
    raw: [Option<Bytes>; 4],
    message: &'static str,
}

impl Fields {
    fn parse(
        &mut self,
        buf: &Bytes,
        message: &'static str,
        schema: &[(u32, Kind)],
    ) -> Result<(), PacketError> {
        self.message = message;
        let mut r = Reader::new(buf);
        while let Some((field, wt)) = r.key()? {
            let kind = schema.iter().find(|(f, _)| *f == field).map(|(_, k)| *k);
            match (kind, wt) {
                (Some(Kind::Int), WT_VARINT) => self.ints[field as usize] = r.varint()? as i64,
                (Some(Kind::Str | Kind::Raw), WT_LEN) => {
                    let b = r.len_delimited()?;
                    let b = buf.slice_ref(b);
                    if kind == Some(Kind::Str) && std::str::from_utf8(&b).is_err() {
                        return Err(PacketError::InvalidUtf8 {
                            message,
                            field: field_name(message, field),
                        });
                    }
                    self.raw[field as usize] = Some(b);
                }
                (Some(_), _) => {
                    return Err(PacketError::WireType {
                        field,
                        wire_type: wt,
                    })
                }
                (None, _) => r.skip(field, wt)?,
            }
        }
        Ok(())
    }

    fn int(&self, f: usize) -> i64 {
        self.ints[f]
    }

    fn bytes(&mut self, f: usize) -> Bytes {
        self.raw[f].take().unwrap_or_default()
    }

    fn string(&mut self, f: usize) -> String {
        // Checked to be UTF-8 in `parse`.
        String::from_utf8_lossy(&self.bytes(f)).into_owned()
    }
}

fn field_name(message: &str, field: u32) -> &'static str {
    match (message, field) {
        ("DialRequest", 1) => "protocol",
        ("DialRequest", 2) => "address",
        ("Data", 2) | (_, 1) => "error",
        _ => "string",
    }
}

/// A bounds-checked cursor over protobuf bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The next field key, or `None` at the end.
    fn key(&mut self) -> Result<Option<(u32, u8)>, PacketError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let k = self.varint()?;
        let field = u32::try_from(k >> 3).map_err(|_| PacketError::WireType {
            field: u32::MAX,
            wire_type: (k & 7) as u8,
        })?;
        if field == 0 {
            return Err(PacketError::FieldZero);
        }
        Ok(Some((field, (k & 7) as u8)))
    }

    fn varint(&mut self) -> Result<u64, PacketError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(PacketError::Truncated { what: "varint" });
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(PacketError::VarintTooLong)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], PacketError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(PacketError::Truncated { what })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], PacketError> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| PacketError::Truncated {
            what: "length-delimited field",
        })?;
        self.take(len, "length-delimited field")
    }

    /// Skips an unknown field of any wire type except the deprecated groups.
    fn skip(&mut self, field: u32, wt: u8) -> Result<(), PacketError> {
        match wt {
            WT_VARINT => self.varint().map(drop),
            WT_I64 => self.take(8, "fixed64 field").map(drop),
            WT_LEN => self.len_delimited().map(drop),
            WT_I32 => self.take(4, "fixed32 field").map(drop),
            _ => Err(PacketError::WireType {
                field,
                wire_type: wt,
            }),
        }
    }
}

fn put_varint(out: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

fn put_key(out: &mut BytesMut, field: u32, wt: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wt));
}

fn put_varint_field(out: &mut BytesMut, field: u32, v: u64) {
    if v != 0 {
        put_key(out, field, WT_VARINT);
        put_varint(out, v);
    }
}

fn put_int64(out: &mut BytesMut, field: u32, v: i64) {
    put_varint_field(out, field, v as u64);
}

fn put_bytes(out: &mut BytesMut, field: u32, v: &[u8]) {
    if !v.is_empty() {
        put_key(out, field, WT_LEN);
        put_varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

fn put_string(out: &mut BytesMut, field: u32, v: &str) {
    put_bytes(out, field, v.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Bytes {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect::<Vec<_>>()
            .into()
    }

    fn vectors() -> Vec<(Packet, &'static str)> {
        vec![
            (
                Packet::DialRequest {
                    protocol: "tcp".into(),
                    address: "10.0.0.5:10250".into(),
                    random: 42,
                },
                "12170a03746370120e31302e302e302e353a3130323530182a",
            ),
            (
                Packet::DialResponse {
                    error: String::new(),
                    connect_id: 7,
                    random: 42,
                },
                "08011a041007182a",
            ),
            (
                Packet::DialResponse {
                    error: "refused".into(),
                    connect_id: 0,
                    random: 42,
                },
                "08011a0b0a0772656675736564182a",
            ),
            (
                Packet::Data {
                    connect_id: 7,
                    error: String::new(),
                    data: Bytes::from_static(b"hi"),
                },
                "0804220608071a026869",
            ),
            (Packet::CloseRequest { connect_id: 7 }, "08022a020807"),
            (
                Packet::CloseResponse {
                    error: String::new(),
                    connect_id: 7,
                },
                "080332021007",
            ),
            (Packet::DialClose { random: 42 }, "08053a02082a"),
            (
                Packet::DialRequest {
                    protocol: "tcp".into(),
                    address: "a:1".into(),
                    random: -1,
                },
                "12150a037463701203613a3118ffffffffffffffffff01",
            ),
            (Packet::Drain, "08064200"),
        ]
    }

    #[test]
    fn reference_vectors_encode_byte_for_byte() {
        for (packet, want) in vectors() {
            assert_eq!(encode(&packet), hex(want), "{packet:?}");
        }
    }

    #[test]
    fn reference_vectors_decode() {
        for (packet, bytes) in vectors() {
            assert_eq!(decode(&hex(bytes)).unwrap(), packet, "{bytes}");
        }
    }

    #[test]
    fn fields_in_any_order_and_unknown_fields_are_skipped() {
        // DIAL_RSP with the payload before the type, random before connectID,
        // and unknown fields of every wire type at both levels.
        let b = hex(concat!(
            "1a0c",             // dialResponse, 12 bytes:
            "182a",             //   random=42
            "f80101",           //   field 31 varint
            "1007",             //   connectID=7
            "2d01020304",       //   field 5 fixed32
            "0801",             // type=DIAL_RSP
            "4901020304050607", // field 9 fixed64 (8 bytes)
            "08",
            "5203616263", // field 10 len "abc"
        ));
        assert_eq!(
            decode(&b).unwrap(),
            Packet::DialResponse {
                error: String::new(),
                connect_id: 7,
                random: 42
            }
        );
    }

    #[test]
    fn missing_payload_means_defaults_and_unknown_types_are_reported() {
        assert_eq!(
            decode(&hex("0804")).unwrap(),
            Packet::Data {
                connect_id: 0,
                error: String::new(),
                data: Bytes::new()
            }
        );
        assert_eq!(decode(&hex("")).unwrap(), decode(&hex("1200")).unwrap());
        assert_eq!(
            decode(&hex("0809")).unwrap(),
            Packet::Unknown { packet_type: 9 }
        );
        assert_eq!(decode(&hex("08064200")).unwrap(), Packet::Drain);
    }

    #[test]
    fn extreme_int64_values_round_trip() {
        for v in [i64::MIN, -1, 0, 1, i64::MAX] {
            let p = Packet::DialClose { random: v };
            assert_eq!(decode(&encode(&p)).unwrap(), p);
        }
    }

    #[test]
    fn data_round_trips_large_payloads() {
        let data: Bytes = (0..70_000u32).map(|i| i as u8).collect::<Vec<_>>().into();
        let p = Packet::Data {
            connect_id: 1 << 40,
            error: String::new(),
            data,
        };
        assert_eq!(decode(&encode(&p)).unwrap(), p);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let bad = [
            "08",                     // truncated varint
            "12ff",                   // truncated length
            "1205",                   // length beyond the end
            "0a00",                   // type with a length wire type
            "0b",                     // group start
            "00",                     // field 0
            "ffffffffffffffffffffff", // varint too long
        ];
        for b in bad {
            assert!(decode(&hex(b)).is_err(), "{b}");
        }
        // protocol is not UTF-8.
        assert!(matches!(
            decode(&hex("12030a01ff")),
            Err(PacketError::InvalidUtf8 { .. })
        ));
        // Every prefix of every vector, and every single-byte corruption, is
        // decoded or refused without panicking.
        for (_, v) in vectors() {
            let v = hex(v);
            for cut in 0..v.len() {
                let _ = decode(&v.slice(..cut));
            }
            for i in 0..v.len() {
                for x in [0x00, 0x7f, 0x80, 0xff] {
                    let mut m = v.to_vec();
                    m[i] = x;
                    let _ = decode(&Bytes::from(m));
                }
            }
        }
    }
}
