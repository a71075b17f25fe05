//! The agent's usable server connections, for streams the agent opens itself.
//!
//! Each [`Connector`](crate::connector::Connector) (one per server address)
//! publishes its registered connection here and withdraws it when it ends
//! or its server says it is leaving; components that reach cloud services
//! over the tunnel (the node proxy's `--apiserver tunnel`, certificate
//! renewal) hold an [`AgentLink`] and open service streams on any usable
//! connection, QUIC or WebSocket, rotating between them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::{AgentService, DialErrorKind, DialResult, Message};
use tokio::sync::watch;
use transport::framed::{read_message, write_message, FramedError};
use transport::tunnel_io::TunnelIo;
use transport::{StreamError, TunnelConnection, TunnelRecv, TunnelSend};

/// Why a service stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No registered connection to the server right now.
    #[error("not connected to the tunnel server")]
    NotConnected,
    /// The connection failed while opening the stream.
    #[error("opening a stream to the tunnel server: {0}")]
    Open(#[from] StreamError),
    /// The service request or its answer could not be exchanged.
    #[error("{service} request to the tunnel server failed: {source}")]
    Exchange {
        service: &'static str,
        source: FramedError,
    },
    /// The server answered, but not with a dial result.
    #[error("{service}: unexpected answer from the tunnel server: {answer}")]
    Unexpected {
        service: &'static str,
        answer: String,
    },
    /// The server refused or could not reach the service.
    #[error("{service} via the tunnel server failed ({}): {message}", kind.as_str())]
    Refused {
        service: &'static str,
        kind: DialErrorKind,
        message: String,
    },
    /// No answer within the limit.
    #[error("{service}: no answer from the tunnel server within {after:?}")]
    Timeout {
        service: &'static str,
        after: Duration,
    },
}

/// The usable connections, one slot per server address (publisher id).
type Links = Vec<(u64, TunnelConnection)>;

/// Hands out a [`LinkPublisher`] per server connection; held by the agent.
#[derive(Debug, Clone)]
pub struct LinkSet {
    links: Arc<watch::Sender<Links>>,
    next_id: Arc<AtomicU64>,
}

/// Publishes one server address's current connection; held by its connector.
/// Dropping it withdraws the connection.
#[derive(Debug)]
pub struct LinkPublisher {
    id: u64,
    links: Arc<watch::Sender<Links>>,
}

/// A cheap, cloneable handle for opening edge→cloud service streams on any
/// usable server connection.
#[derive(Debug, Clone)]
pub struct AgentLink {
    links: watch::Receiver<Links>,
    /// Rotates the connection new streams start on.
    next: Arc<AtomicUsize>,
}

/// A new set of publishers and the handle that follows all of them.
pub fn channel() -> (LinkSet, AgentLink) {
    let (tx, rx) = watch::channel(Vec::new());
    (
        LinkSet {
            links: Arc::new(tx),
            next_id: Arc::new(AtomicU64::new(0)),
        },
        AgentLink {
            links: rx,
            next: Arc::new(AtomicUsize::new(0)),
        },
    )
}

impl LinkSet {
    /// A publisher for one more server connection.
    pub fn publisher(&self) -> LinkPublisher {
        LinkPublisher {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            links: self.links.clone(),
        }
    }
}

impl LinkPublisher {
    /// New streams may use `link` (in place of this publisher's previous one).
    pub fn publish(&self, link: &TunnelConnection) {
        self.links.send_modify(|links| {
            links.retain(|(id, _)| *id != self.id);
            links.push((self.id, link.clone()));
        });
    }

    /// This server connection takes no new streams (gone, or its server is leaving).
    pub fn withdraw(&self) {
        self.links
            .send_if_modified(|links| remove_entry(links, self.id));
    }
}

impl Drop for LinkPublisher {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// Removes publisher `id`'s entry; whether there was one.
fn remove_entry(links: &mut Links, id: u64) -> bool {
    let before = links.len();
    links.retain(|(i, _)| *i != id);
    links.len() != before
}

/// An accepted service stream: the service's bytes follow on both halves.
#[derive(Debug)]
pub struct ServiceStream {
    pub send: TunnelSend,
    pub recv: TunnelRecv,
}

impl ServiceStream {
    /// The stream as one `AsyncRead + AsyncWrite` object (e.g. for TLS on top).
    pub fn into_io(self) -> TunnelIo {
        TunnelIo::new(self.send, self.recv)
    }
}

impl AgentLink {
    /// Whether a usable server connection exists right now.
    pub fn is_connected(&self) -> bool {
        !self.links.borrow().is_empty()
    }

    /// One usable connection, a different one each call when there are several.
    fn pick(&self) -> Option<TunnelConnection> {
        let links = self.links.borrow();
        if links.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % links.len();
        Some(links[i].1.clone())
    }

    /// Waits until a connection is published or withdrawn; never returns once
    /// the connector is gone.
    pub async fn connection_changed(&mut self) {
        if self.links.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Opens a stream on the current connection, asks for `service` and
    /// waits (up to `limit`) for the server's answer. Fails at once when not
    /// connected: callers (the node proxy's health logic) must not hang.
    pub async fn open_service(
        &self,
        service: AgentService,
        limit: Duration,
    ) -> Result<ServiceStream, LinkError> {
        let link = self.pick().ok_or(LinkError::NotConnected)?;
        let name = service.as_str();
        let exchange = async {
            let (mut send, mut recv) = link.open_stream().await?;
            let request = Message::Service(service);
            let answer = async {
                write_message(&mut send, &request).await?;
                read_message(&mut recv).await
            }
            .await
            .map_err(|source| LinkError::Exchange {
                service: name,
                source,
            })?;
            match answer {
                Message::DialResult(DialResult::Connected) => Ok(ServiceStream { send, recv }),
                Message::DialResult(DialResult::Failed { kind, message }) => {
                    Err(LinkError::Refused {
                        service: name,
                        kind,
                        message,
                    })
                }
                other => Err(LinkError::Unexpected {
                    service: name,
                    answer: format!("{other:?}"),
                }),
            }
        };
        // Dropping the exchange on timeout drops (and so resets) the stream.
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| LinkError::Timeout {
                service: name,
                after: limit,
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fails_fast_without_a_connection() {
        let (set, link) = channel();
        let publisher = set.publisher();
        assert!(!link.is_connected());
        let started = std::time::Instant::now();
        let err = link
            .open_service(AgentService::Apiserver, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, LinkError::NotConnected), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));
        publisher.withdraw();
        assert!(!link.is_connected());
    }
}
