//! QUIC endpoints tuned for edge links.
//!
//! Keep-alives hold NAT bindings open; the idle timeout decides how fast a
//! silently dead peer is noticed; flow-control windows are large enough for
//! throughput on long links yet capped per connection, because quinn's
//! default connection window is unbounded and thousands of agents must fit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};

/// Streams an agent lets the server have open at once on its QUIC
/// connection: above any `--max-streams-per-node` the server accepts, so the
/// server's own limit answers (503) before the credit runs out. Not larger:
/// quinn keeps state for every stream it allows the peer (about 75 bytes
/// each, allocated up front), about 1.9 MB per connection at this value.
pub const AGENT_STREAM_CREDIT: u32 = 25_000;

pub use crate::congestion::{CongestionControl, UnknownCongestionControl};

/// Knobs of one QUIC connection; defaults suit NAT'd edge nodes.
#[derive(Debug, Clone, Copy)]
pub struct QuicTuning {
    /// How often an idle connection sends a PING (keeps NAT bindings alive).
    pub keep_alive: Duration,
    /// Silence after which the connection is declared dead.
    pub idle_timeout: Duration,
    /// Per-stream receive window in bytes.
    pub stream_window: u32,
    /// Per-connection receive window (all streams) in bytes.
    pub connection_window: u32,
    /// Per-connection send buffer bound in bytes.
    pub send_window: u32,
    /// Most concurrent bidirectional streams the peer may open towards us.
    /// quinn grants new credit as streams close, so this bounds streams
    /// open at once, not streams over the connection's life.
    pub max_incoming_streams: u32,
    /// The sender's congestion controller.
    pub congestion: CongestionControl,
}

impl Default for QuicTuning {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            stream_window: 1024 * 1024,
            connection_window: 8 * 1024 * 1024,
            send_window: 8 * 1024 * 1024,
            max_incoming_streams: 4096,
            congestion: CongestionControl::default(),
        }
    }
}

/// Errors building an endpoint.
#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    #[error("TLS configuration cannot be used for QUIC: {0}")]
    Crypto(String),
    #[error("idle timeout {0:?} is out of range")]
    IdleTimeout(Duration),
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl QuicTuning {
    /// The quinn transport configuration for these knobs.
    pub fn transport_config(&self) -> Result<TransportConfig, QuicSetupError> {
        let mut t = TransportConfig::default();
        let idle = IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| QuicSetupError::IdleTimeout(self.idle_timeout))?;
        t.max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.keep_alive))
            .stream_receive_window(VarInt::from_u32(self.stream_window))
            .receive_window(VarInt::from_u32(self.connection_window))
            .send_window(u64::from(self.send_window))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.max_incoming_streams))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None)
            .congestion_controller_factory(self.congestion.factory());
        Ok(t)
    }
}

/// A server endpoint accepting agents on `addr` (UDP).
///
/// Whether a connection attempt was refused before its handshake (the
/// server's `--max-pending-handshakes` were in progress): busy, not broken.
pub fn refused_as_busy(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::ConnectionClosed(c)
        if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

/// Least time between two stateless resets the server sends: up to 10,000
/// agents a second learn that a restarted server lost their connection.
pub const RESET_INTERVAL: std::time::Duration = std::time::Duration::from_micros(100);

/// `reset_secret` (the server's private key bytes) seeds the stateless-reset
/// key, so a *restarted* server can tell agents that their old connection is
/// gone; they reconnect at their next keep-alive instead of waiting for the
/// idle timeout.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    tuning: &QuicTuning,
    reset_secret: &[u8],
) -> Result<quinn::Endpoint, QuicSetupError> {
    let crypto =
        QuicServerConfig::try_from(tls).map_err(|e| QuicSetupError::Crypto(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(tuning.transport_config()?));
    let salt = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"edgetunnel stateless reset v1");
    let derived = ring::hmac::sign(&salt, reset_secret);
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref());
    let mut endpoint_cfg = quinn::EndpointConfig::new(Arc::new(reset_key));
    // quinn validates connection IDs with a per-process random key by default,
    // so a restarted server would silently drop the agents' packets instead of
    // answering with a stateless reset. Derive that key from the secret too.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&derived.as_ref()[..8]);
    let cid_key = u64::from_be_bytes(cid_key);
    endpoint_cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    // quinn sends at most one stateless reset per 20 ms by default: 50 agents
    // a second learn of a restart, the rest wait for their idle timeout and
    // then come back together (fleet-bench: median 16 s at 5,000 agents).
    // Connection IDs are validated by the keyed hash above, so garbage does
    // not trigger resets; allow one per RESET_INTERVAL.
    endpoint_cfg.min_reset_interval(RESET_INTERVAL);
    let socket = udp_socket(addr).map_err(|source| QuicSetupError::Bind { addr, source })?;
    quinn::Endpoint::new(
        endpoint_cfg,
        Some(cfg),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| QuicSetupError::Bind { addr, source })
}

/// The quinn client configuration an agent dials with: its TLS identity
/// plus the transport knobs of `tuning`.
pub fn client_config(
    tls: rustls::ClientConfig,
    tuning: &QuicTuning,
) -> Result<quinn::ClientConfig, QuicSetupError> {
    let crypto =
        QuicClientConfig::try_from(tls).map_err(|e| QuicSetupError::Crypto(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(tuning.transport_config()?));
    Ok(cfg)
}

/// A client endpoint for dialing `server` (binds an ephemeral UDP port of the same family).
pub fn client_endpoint(
    server: SocketAddr,
    tls: rustls::ClientConfig,
    tuning: &QuicTuning,
) -> Result<quinn::Endpoint, QuicSetupError> {
    let cfg = client_config(tls, tuning)?;
    let bind: SocketAddr = if server.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let bind_err = |source| QuicSetupError::Bind { addr: bind, source };
    let socket = udp_socket(bind).map_err(bind_err)?;
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_err)?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// Socket buffer size asked for on QUIC sockets (the kernel caps it at
/// `net.core.rmem_max` / `wmem_max`). The default (~200 KiB) overflows when
/// hundreds of agents reconnect at once: dropped Initial packets then wait
/// a full retransmission timeout, and a fleet takes a minute to come back.
pub const UDP_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// A UDP socket bound to `addr` with large buffers.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped peers too when bound to [::].
        let _ = socket.set_only_v6(false);
    }
    if let Err(e) = socket.set_recv_buffer_size(UDP_BUFFER_BYTES) {
        tracing::warn!(error = %e, "could not enlarge the UDP receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(UDP_BUFFER_BYTES) {
        tracing::warn!(error = %e, "could not enlarge the UDP send buffer");
    }
    socket.bind(&addr.into())?;
    if let Ok(n) = socket.recv_buffer_size() {
        if n < UDP_BUFFER_BYTES {
            tracing::info!(
                granted = n,
                wanted = UDP_BUFFER_BYTES,
                "UDP receive buffer capped by net.core.rmem_max; raise it for large fleets"
            );
        }
    }
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_controller_builds_a_transport_config() {
        for congestion in [
            CongestionControl::Cubic,
            CongestionControl::NewReno,
            CongestionControl::Bbr,
            CongestionControl::LossTolerant,
        ] {
            let tuning = QuicTuning {
                congestion,
                ..QuicTuning::default()
            };
            assert!(tuning.transport_config().is_ok(), "{congestion:?}");
        }
    }
}
