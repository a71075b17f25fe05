//! The async edges of the tunnel, shared by `tunnel-server` and `tunnel-agent`.
//!
//! `proto` decides what bytes mean; this crate moves them: it tunes QUIC for
//! NAT'd edge links ([`quic`]), reads and writes control frames on a stream
//! ([`framed`]), abstracts a tunnel stream over transports ([`stream`]), and
//! splices a local socket to a tunnel stream keeping TCP half-close and reset
//! semantics ([`splice`]). [`admin`] is the tiny HTTP server both binaries
//! use for `/metrics` and health endpoints; [`tunnel_io`] turns a
//! tunnel stream into one I/O object for protocol libraries such as hyper.

pub mod admin;
pub mod cli;
pub mod congestion;
pub mod framed;
pub mod hop_by_hop;
pub mod http_server;
pub mod idle;
pub mod mux;
pub mod quic;
pub mod schedule;
pub mod socket;
pub mod splice;
pub mod stream;
pub mod tunnel_io;
pub mod tunnel_tcp;
pub mod ws;

pub use stream::{StreamError, TransportKind, TunnelConnection, TunnelRecv, TunnelSend};
