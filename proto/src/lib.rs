//! The agent↔server tunnel protocol, as pure data and functions (no I/O).
//!
//! Like `quinn-proto`, this crate decides and validates; the async layers in
//! `transport`, `tunnel-server` and `tunnel-agent` move the bytes. Everything
//! that comes from the wire is decoded here with bounded lengths, so a hostile
//! peer can make us return an error but never panic or allocate without limit.
//!
//! Layout of a tunnel connection (QUIC, or a multiplexed WebSocket):
//! - the agent opens the first bidirectional stream, the *control stream*, and
//!   sends [`Hello`]; the server answers [`HelloAck`];
//! - for every tunneled TCP connection the server opens a new bidirectional
//!   stream and sends [`OpenStream`]; the agent dials and answers
//!   [`DialResult`]; after a successful result the stream carries raw bytes;
//! - in the other direction, the agent opens a stream and sends
//!   [`Message::Service`] to reach a cloud-side [`AgentService`] (the
//!   apiserver for its node proxy, certificate renewal); the server answers
//!   [`DialResult`] and the stream then carries that service's bytes.

pub mod codes;
pub mod connect_head;
pub mod enroll;
pub mod frame;
pub mod grpc;
pub mod konnectivity;
pub mod message;
pub mod target;
pub mod tls_hello;

#[cfg(test)]
mod fuzz_seeds;

pub use frame::{decode, encode, DecodeError, EncodeError, FrameDecoder, MAX_FRAME_LEN};
pub use message::{
    AgentService, DialErrorKind, DialResult, Hello, HelloAck, Message, OpenStream, RejectReason,
};
pub use target::{DialTarget, Host, TargetParseError};

/// Version of the tunnel protocol carried in [`Hello`]; bumped on incompatible change.
pub const PROTOCOL_VERSION: u16 = 1;

/// ALPN identifier for the QUIC transport; names the protocol version so that
/// mismatched peers fail the TLS handshake with a clear reason.
pub const ALPN_QUIC: &[u8] = b"edgetunnel/1";
