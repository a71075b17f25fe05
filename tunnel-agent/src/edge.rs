//! Serving one stream the server opened: check the allowlist, dial the
//! destination at the edge, report the result, then splice bytes.

use std::sync::Arc;
use std::time::Duration;

use proto::{DialErrorKind, DialResult, DialTarget, Host, Message};
use tokio::net::TcpStream;
use tracing::Instrument;
use transport::framed::{read_message_timeout, write_message};
use transport::socket::AbortOnDrop;
use transport::splice::{splice, Direction, SpliceEnd};
use transport::{TunnelRecv, TunnelSend};

use crate::allowlist::Allowlist;
use crate::metrics::AgentMetrics;

/// How long the server has to send the open frame of a new stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Dials edge destinations on the server's behalf.
pub struct EdgeDialer {
    pub allow: Allowlist,
    pub dial_timeout: Duration,
    pub metrics: AgentMetrics,
}

/// A failed dial: the kind reported to the server and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialError {
    pub kind: DialErrorKind,
    pub message: String,
}

impl EdgeDialer {
    /// Handles one server-opened stream from open frame to close.
    pub async fn serve_stream(
        self: Arc<Self>,
        node: Arc<str>,
        mut send: TunnelSend,
        mut recv: TunnelRecv,
    ) {
        let open = match read_message_timeout(&mut recv, OPEN_TIMEOUT).await {
            Ok(Message::Open(o)) => o,
            Ok(other) => {
                tracing::warn!(%node, message = ?other, "stream did not start with an open frame");
                send.reset(proto::codes::STREAM_PROTOCOL_ERROR);
                recv.stop(proto::codes::STREAM_PROTOCOL_ERROR);
                return;
            }
            Err(e) => {
                tracing::debug!(%node, error = %e, "stream closed before its open frame");
                send.reset(proto::codes::STREAM_PROTOCOL_ERROR);
                recv.stop(proto::codes::STREAM_PROTOCOL_ERROR);
                return;
            }
        };
        let span =
            tracing::info_span!("stream", %node, stream_id = open.stream_id, target = %open.target);
        self.carry(open.target, send, recv).instrument(span).await;
    }

    async fn carry(&self, target: DialTarget, mut send: TunnelSend, recv: TunnelRecv) {
        send.control_phase();
        let mut tcp = match self.dial(&target).await {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::info!(
                    reason = e.kind.as_str(),
                    "dial refused or failed: {}",
                    e.message
                );
                self.metrics
                    .dial_failures
                    .with_label_values(&[e.kind.as_str()])
                    .inc();
                let msg = Message::DialResult(DialResult::Failed {
                    kind: e.kind,
                    message: e.message,
                });
                if write_message(&mut send, &msg).await.is_ok() {
                    send.finish().await;
                }
                return;
            }
        };
        if write_message(&mut send, &Message::DialResult(DialResult::Connected))
            .await
            .is_err()
        {
            return;
        }
        send.data_phase();
        self.metrics.streams_active.inc();
        let to_cloud = self.metrics.bytes_total.with_label_values(&["to_cloud"]);
        let from_cloud = self.metrics.bytes_total.with_label_values(&["from_cloud"]);
        let outcome = splice(&mut tcp, send, recv, |dir, n| match dir {
            Direction::ToTunnel => to_cloud.inc_by(n as u64),
            Direction::FromTunnel => from_cloud.inc_by(n as u64),
        })
        .await;
        self.metrics.streams_active.dec();
        tracing::debug!(to_cloud = outcome.to_tunnel, from_cloud = outcome.from_tunnel,
            end = ?outcome.end, "stream closed");
        if matches!(outcome.end, SpliceEnd::TunnelReset | SpliceEnd::TunnelLost) {
            let _ = tcp.abort_on_drop();
        }
    }

    /// Checks the allowlist and connects, with a precise error on failure.
    pub async fn dial(&self, target: &DialTarget) -> Result<TcpStream, DialError> {
        if !self.allow.permits(target) {
            return Err(DialError {
                kind: DialErrorKind::NotAllowed,
                message: format!("{target} is not in this agent's --allow list"),
            });
        }
        let attempt = async {
            let addrs: Vec<std::net::SocketAddr> = match &target.host {
                Host::Ip(ip) => vec![(*ip, target.port).into()],
                Host::Name(n) => tokio::net::lookup_host((n.as_str(), target.port))
                    .await
                    .map_err(|e| DialError {
                        kind: DialErrorKind::Unreachable,
                        message: format!("cannot resolve {n}: {e}"),
                    })?
                    .collect(),
            };
            let mut last = DialError {
                kind: DialErrorKind::Unreachable,
                message: format!("{target} resolved to no address"),
            };
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(s);
                    }
                    Err(e) => {
                        last = DialError {
                            kind: classify(&e),
                            message: format!("connecting to {addr}: {e}"),
                        }
                    }
                }
            }
            Err(last)
        };
        tokio::time::timeout(self.dial_timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(DialError {
                    kind: DialErrorKind::Timeout,
                    message: format!("no answer from {target} within {:?}", self.dial_timeout),
                })
            })
    }
}

/// Maps a connect error to the kind reported to the server.
pub use transport::socket::dial_error_kind as classify;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn dialer(allow: &[&str]) -> EdgeDialer {
        EdgeDialer {
            allow: Allowlist::new(allow.iter().map(|s| s.parse().unwrap()).collect()),
            dial_timeout: Duration::from_secs(2),
            metrics: AgentMetrics::new().unwrap(),
        }
    }

    #[tokio::test]
    async fn refuses_destinations_outside_the_allowlist_without_dialing() {
        let d = dialer(&["127.0.0.1:1"]);
        let e = d.dial(&"127.0.0.1:2".parse().unwrap()).await.unwrap_err();
        assert_eq!(e.kind, DialErrorKind::NotAllowed);
        assert!(e.message.contains("127.0.0.1:2"), "{}", e.message);
    }

    #[tokio::test]
    async fn reports_refused_ports_precisely() {
        // Bind then drop to find a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rule = format!("127.0.0.1:{port}");
        let d = dialer(&[&rule]);
        let e = d.dial(&rule.parse().unwrap()).await.unwrap_err();
        assert_eq!(e.kind, DialErrorKind::Refused, "{}", e.message);
    }

    #[tokio::test]
    async fn connects_to_allowed_listeners() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rule = l.local_addr().unwrap().to_string();
        let d = dialer(&[&rule]);
        assert!(d.dial(&rule.parse().unwrap()).await.is_ok());
    }

    #[test]
    fn classifies_errors() {
        assert_eq!(
            classify(&io::ErrorKind::ConnectionRefused.into()),
            DialErrorKind::Refused
        );
        assert_eq!(
            classify(&io::ErrorKind::HostUnreachable.into()),
            DialErrorKind::Unreachable
        );
        assert_eq!(
            classify(&io::ErrorKind::TimedOut.into()),
            DialErrorKind::Timeout
        );
        assert_eq!(
            classify(&io::ErrorKind::PermissionDenied.into()),
            DialErrorKind::Other
        );
    }
}
