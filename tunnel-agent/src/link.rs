//! The agent's current server connection, for streams the agent opens itself.
//!
//! The [`Connector`](crate::connector::Connector) publishes each registered
//! connection here (and withdraws it when it ends); components that reach
//! cloud services over the tunnel (the node proxy's `--apiserver tunnel`,
//! certificate renewal) hold an [`AgentLink`] and open service streams on
//! whatever connection is current, QUIC or WebSocket.

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

/// Publishes the current connection; held by the connector.
#[derive(Debug)]
pub struct LinkPublisher(watch::Sender<Option<TunnelConnection>>);

/// A cheap, cloneable handle for opening edge→cloud service streams.
#[derive(Debug, Clone)]
pub struct AgentLink(watch::Receiver<Option<TunnelConnection>>);

/// A new publisher and the handle that follows it.
pub fn channel() -> (LinkPublisher, AgentLink) {
    let (tx, rx) = watch::channel(None);
    (LinkPublisher(tx), AgentLink(rx))
}

impl LinkPublisher {
    /// New streams go to `link` from now on.
    pub fn publish(&self, link: &TunnelConnection) {
        self.0.send_replace(Some(link.clone()));
    }

    /// No connection: opening streams fails fast until the next one.
    pub fn withdraw(&self) {
        self.0.send_replace(None);
    }
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
    /// Whether a registered connection exists right now.
    pub fn is_connected(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Waits until a connection is published or withdrawn; never returns once
    /// the connector is gone.
    pub async fn connection_changed(&mut self) {
        if self.0.changed().await.is_err() {
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
        let link = self.0.borrow().clone().ok_or(LinkError::NotConnected)?;
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
        let (publisher, link) = channel();
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
