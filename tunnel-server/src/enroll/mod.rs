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
    /// Answers enrollment and renewal requests.
    pub issuer: Arc<Issuer>,
    /// Per-source-IP limit of enrollment attempts.
    pub rate: Arc<rate::EnrollRate>,
}

impl AgentPortTls {
    /// The config for a ClientHello offering `alpn`, and whether it is the enrollment one.
    pub fn select<'a>(
        &self,
        mut alpn: Option<impl Iterator<Item = &'a [u8]>>,
    ) -> (Arc<ServerConfig>, bool) {
        let enroll = alpn
            .as_mut()
            .is_some_and(|protocols| protocols.any(|p| p == proto::enroll::ALPN_ENROLL));
        if enroll {
            (self.enroll.clone(), true)
        } else {
            (self.tunnel.clone(), false)
        }
    }
}
