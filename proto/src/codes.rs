//! Application error codes for QUIC stream resets and connection closes.
//!
//! Shared so both ends agree on what a reset means (e.g. "the TCP peer sent
//! RST" versus "the stream was cancelled").

/// The TCP connection at the far end was reset (RST); the receiver resets its side too.
pub const STREAM_TCP_RESET: u32 = 1;
/// The stream was abandoned (front-end client gone, dial cancelled, shutdown).
pub const STREAM_CANCELLED: u32 = 2;
/// The stream violated the protocol (bad open frame, oversized header).
pub const STREAM_PROTOCOL_ERROR: u32 = 3;

/// Connection closed on purpose (process shutting down).
pub const CONN_SHUTDOWN: u32 = 0;
/// The server refused the agent's handshake.
pub const CONN_REJECTED: u32 = 1;
/// A newer connection for the same node replaced this one.
pub const CONN_REPLACED: u32 = 2;
/// The peer broke the protocol.
pub const CONN_PROTOCOL_ERROR: u32 = 3;
