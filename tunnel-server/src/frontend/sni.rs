//! `--kubelet-addr`: TLS passthrough by server name (SNI).
//!
//! metrics-server and scrapers dial `https://<node>:10250` directly and cannot
//! use a proxy. When node names resolve to this server (`--dns-hosts-file`),
//! their TLS ClientHello names the node: the connection is routed to that
//! node's agent like a CONNECT and the bytes, ClientHello included, are
//! carried untouched to the kubelet port on the node. The server never holds
//! a key: kubelet's own certificate and client authentication work end to end.
//!
//! Before any dial the ClientHello is read (bounded by
//! [`tls_hello::MAX_HELLO`], within `--header-timeout`); a connection that
//! cannot be routed is closed with a fatal TLS alert that fits the reason,
//! a log line and a `tunnel_server_passthrough_refused_total` (before the dial)
//! or `tunnel_server_streams_total{frontend="sni"}` (the dial) count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use proto::tls_hello::{self, AlertDescription, HelloError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;
use transport::http_server::accept_backoff;

use super::{linger_close, splice_to_edge};
use crate::dial::{DialFailure, Dialer, Frontend};

/// Most bytes read while looking for a complete ClientHello: the hello
/// itself plus the headers of the records it is split into.
const MAX_PEEK: usize = 2 * tls_hello::MAX_HELLO;

/// What the SNI listener needs.
pub struct SniFrontend {
    pub dialer: Arc<Dialer>,
    /// The ClientHello must arrive within this time (`--header-timeout`).
    pub header_timeout: Duration,
    /// Port dialed on the node (`--kubelet-port`).
    pub kubelet_port: u16,
    /// Suffix stripped from server names (`--node-domain`), lower-case, no dots around.
    pub node_domain: Option<String>,
}

/// The node a server name asks for: the name without `.<node_domain>`, or
/// the name itself (node names may contain dots).
pub fn node_for<'a>(server_name: &'a str, node_domain: Option<&str>) -> &'a str {
    node_domain
        .and_then(|d| server_name.strip_suffix(d))
        .and_then(|rest| rest.strip_suffix('.'))
        .filter(|node| !node.is_empty())
        .unwrap_or(server_name)
}

/// Why a connection was refused before its dial; each has a metric reason
/// and the alert the client gets.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("no ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("client closed before its ClientHello was complete")]
    Closed,
    #[error(transparent)]
    Hello(#[from] HelloError),
    #[error("ClientHello not complete within {MAX_PEEK} bytes")]
    TooManyRecords,
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Timeout(_) => "timeout",
            Refusal::Closed => "closed",
            Refusal::Hello(HelloError::NotTls | HelloError::RecordTooLong(_)) => "not_tls",
            Refusal::Hello(HelloError::NotClientHello) => "not_client_hello",
            Refusal::Hello(HelloError::NoServerName) => "no_server_name",
            Refusal::Hello(HelloError::BadServerName) => "bad_server_name",
            Refusal::Hello(HelloError::Truncated(_)) => "malformed",
            Refusal::Hello(HelloError::TooLarge) | Refusal::TooManyRecords => "too_large",
        }
    }

    /// The alert to send, `None` when the client is gone.
    fn alert(&self) -> Option<AlertDescription> {
        match self {
            Refusal::Closed => None,
            Refusal::Hello(HelloError::NoServerName | HelloError::BadServerName) => {
                Some(AlertDescription::UnrecognizedName)
            }
            _ => Some(AlertDescription::DecodeError),
        }
    }
}

/// The alert for a failed dial: unknown node, allowlist refusal, or the
/// connection could not be carried.
pub fn dial_alert(e: &DialFailure) -> AlertDescription {
    match e {
        DialFailure::NoAgent { .. } => AlertDescription::UnrecognizedName,
        DialFailure::NotAllowed { .. } => AlertDescription::AccessDenied,
        DialFailure::Peer { label, .. } => match *label {
            "no_agent" => AlertDescription::UnrecognizedName,
            "not_allowed" => AlertDescription::AccessDenied,
            _ => AlertDescription::InternalError,
        },
        _ => AlertDescription::InternalError,
    }
}

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, sni: Arc<SniFrontend>) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                tokio::spawn(sni.clone().connection(sock, peer));
            }
            Err(e) => accept_backoff("kubelet-addr", &e).await,
        }
    }
}

impl SniFrontend {
    async fn connection(self: Arc<Self>, mut sock: TcpStream, peer: SocketAddr) {
        // Enough for most ClientHellos (about 2 KiB with post-quantum key
        // shares); an idle connection holds no more than this.
        let mut buf = BytesMut::with_capacity(2048);
        let name = match tokio::time::timeout(self.header_timeout, read_hello(&mut sock, &mut buf))
            .await
            .unwrap_or(Err(Refusal::Timeout(self.header_timeout)))
        {
            Ok(name) => name,
            Err(refusal) => {
                tracing::info!(%peer, reason = refusal.reason(), error = %refusal,
                    "SNI connection refused");
                self.dialer
                    .metrics()
                    .passthrough_refused
                    .with_label_values(&[Frontend::Sni.as_str(), refusal.reason()])
                    .inc();
                if let Some(alert) = refusal.alert() {
                    refuse(&mut sock, alert).await;
                }
                return;
            }
        };
        let node = node_for(&name, self.node_domain.as_deref()).to_string();
        let stream = match self
            .dialer
            .dial_node_port(&node, self.kubelet_port, Frontend::Sni)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                // The dialer logged and counted the failure; say who asked.
                tracing::info!(%peer, server_name = %name, %node, error = %e,
                    "SNI connection refused");
                refuse(&mut sock, dial_alert(&e)).await;
                return;
            }
        };
        let span = tracing::info_span!("stream", node = %stream.node,
            stream_id = stream.stream_id, server_name = %name);
        splice_to_edge(sock, &self.dialer, stream, buf.freeze(), Frontend::Sni)
            .instrument(span)
            .await;
    }
}

/// Reads until `buf` holds a complete ClientHello; its server name.
async fn read_hello(sock: &mut TcpStream, buf: &mut BytesMut) -> Result<String, Refusal> {
    loop {
        if let Some(name) = tls_hello::parse(buf)? {
            return Ok(name);
        }
        if buf.len() >= MAX_PEEK {
            return Err(Refusal::TooManyRecords);
        }
        if buf.len() == buf.capacity() {
            buf.reserve(4096.min(MAX_PEEK - buf.len()));
        }
        match sock.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(Refusal::Closed),
            Ok(_) => {}
        }
    }
}

/// Sends a fatal alert and closes.
async fn refuse(sock: &mut TcpStream, alert: AlertDescription) {
    let _ = sock.write_all(&tls_hello::fatal_alert(alert)).await;
    linger_close(sock).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_map_to_nodes() {
        let d = Some("nodes.example");
        assert_eq!(node_for("edge-1", d), "edge-1");
        assert_eq!(node_for("edge-1.nodes.example", d), "edge-1");
        assert_eq!(node_for("a.b.nodes.example", d), "a.b");
        // Only a whole-label suffix is stripped, and never down to nothing.
        assert_eq!(node_for("edge-1xnodes.example", d), "edge-1xnodes.example");
        assert_eq!(node_for("nodes.example", d), "nodes.example");
        assert_eq!(node_for(".nodes.example", d), ".nodes.example");
        assert_eq!(
            node_for("edge-1.nodes.example", None),
            "edge-1.nodes.example"
        );
    }

    #[test]
    fn refusals_have_fitting_alerts() {
        assert_eq!(
            Refusal::Hello(HelloError::NoServerName).alert(),
            Some(AlertDescription::UnrecognizedName)
        );
        assert_eq!(
            Refusal::Hello(HelloError::NotTls).alert(),
            Some(AlertDescription::DecodeError)
        );
        assert_eq!(Refusal::Closed.alert(), None);
        assert_eq!(
            dial_alert(&DialFailure::NoAgent { host: "x".into() }),
            AlertDescription::UnrecognizedName
        );
        assert_eq!(
            dial_alert(&DialFailure::NotAllowed {
                node: "n".into(),
                target: "t".into(),
                message: "m".into()
            }),
            AlertDescription::AccessDenied
        );
        assert_eq!(
            dial_alert(&DialFailure::StreamLimit { limit: 1 }),
            AlertDescription::InternalError
        );
    }
}
