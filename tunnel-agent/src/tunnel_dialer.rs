//! The node proxy's upstream over the tunnel (`--apiserver tunnel`): the
//! tunnel-backed [`UpstreamDialer`] of the `node_proxy` crate.

use std::time::Duration;

use node_proxy::upstream::{BoxFuture, LinkLiveness, UpstreamDialer, UpstreamIo};
use proto::AgentService;

use crate::link::{AgentLink, LinkError};

/// Reaches the apiserver over the agent's own tunnel connection
/// (`--apiserver tunnel`): an edge→cloud service stream that the tunnel
/// server pipes to its `--apiserver`. Fails at once while disconnected, so
/// the hub goes offline instead of waiting.
pub struct TunnelDialer {
    pub link: AgentLink,
}

/// Upper bound for the server's answer to a service request; the hub's own
/// connect timeout usually ends the attempt first.
const SERVICE_ANSWER_LIMIT: Duration = Duration::from_secs(10);

impl UpstreamDialer for TunnelDialer {
    fn dial(&self) -> BoxFuture<'_, std::io::Result<Box<dyn UpstreamIo>>> {
        Box::pin(async move {
            let stream = self
                .link
                .open_service(AgentService::Apiserver, SERVICE_ANSWER_LIMIT)
                .await
                .map_err(|e| std::io::Error::new(link_error_kind(&e), e))?;
            Ok(Box::new(stream.into_io()) as Box<dyn UpstreamIo>)
        })
    }

    /// The hub rides the tunnel's own liveness (QUIC keep-alives, the
    /// WebSocket's TCP keep-alive) instead of probing while online and quiet.
    fn liveness(&self) -> Option<Box<dyn LinkLiveness>> {
        Some(Box::new(self.link.clone()))
    }
}

impl LinkLiveness for AgentLink {
    fn is_up(&self) -> bool {
        self.is_connected()
    }

    fn changed(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.connection_changed())
    }
}

/// The I/O error kind that best describes why a service stream failed.
fn link_error_kind(e: &LinkError) -> std::io::ErrorKind {
    use std::io::ErrorKind;
    match e {
        LinkError::NotConnected => ErrorKind::NotConnected,
        LinkError::Timeout { .. } => ErrorKind::TimedOut,
        LinkError::Refused {
            kind: proto::DialErrorKind::Refused,
            ..
        } => ErrorKind::ConnectionRefused,
        _ => ErrorKind::Other,
    }
}
