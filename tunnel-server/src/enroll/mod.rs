//! Certificate enrollment and renewal on the agent port.
//!
//! The agent port's TCP listener reads each ClientHello before choosing a TLS config: ALPN
//! [`proto::enroll::ALPN_ENROLL`] gets the enrollment config (client certificate optional,
//! served by [`http`]), anything else the tunnel config (client certificate required).

pub mod http;
pub mod issuer;
pub mod rate;

use std::sync::Arc;

use rustls::ServerConfig;

pub use issuer::Issuer;

/// The TLS configs of the agent port's TCP listener.
pub struct AgentPortTls {
    /// WebSocket tunnel: client certificate required.
    pub tunnel: Arc<ServerConfig>,
    /// Enrollment: client certificate optional.
    pub enroll: Arc<ServerConfig>,
    /// Peer replicas (ALPN [`crate::peers::ALPN_PEER`]): client certificate
    /// required, checked to be a server certificate after the handshake.
    pub peer: Arc<ServerConfig>,
    /// Answers peer replicas.
    pub peers: Arc<crate::peers::serve::PeerService>,
    /// Answers enrollment and renewal requests.
    pub issuer: Arc<Issuer>,
    /// Per-source-IP limit of enrollment attempts.
    pub rate: Arc<rate::EnrollRate>,
}

impl AgentPortTls {
    /// The config for a ClientHello offering `alpn`, and which kind of connection it is.
    pub fn select<'a>(
        &self,
        alpn: Option<impl Iterator<Item = &'a [u8]>>,
    ) -> (Arc<ServerConfig>, PortUse) {
        let offered: Vec<&[u8]> = alpn.map(Iterator::collect).unwrap_or_default();
        if offered.contains(&proto::enroll::ALPN_ENROLL) {
            (self.enroll.clone(), PortUse::Enroll)
        } else if offered.contains(&crate::peers::ALPN_PEER) {
            (self.peer.clone(), PortUse::Peer)
        } else {
            (self.tunnel.clone(), PortUse::Tunnel)
        }
    }
}

/// What a TCP connection on the agent port is for, by its ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortUse {
    /// An agent's WebSocket tunnel.
    Tunnel,
    /// Enrollment or renewal.
    Enroll,
    /// Another replica (the peer path).
    Peer,
}
