//! The agent listener's WebSocket side: TCP on the same port number as QUIC,
//! for edge sites that block UDP.
//!
//! TLS (client certificate required, same CA and identity rules as QUIC),
//! then an HTTP/1.1 upgrade on [`TUNNEL_PATH`], then yamux streams; from there
//! the connection is served exactly like a QUIC one.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use transport::mux::{Frames, MuxRole, PeerInfo};
use transport::tunnel_tcp::TunnelTcp;
use transport::ws::{ws_config, WsByteStream, TUNNEL_PATH};
use transport::TunnelConnection;

use crate::agents::AgentListener;
use crate::enroll::{AgentPortTls, PortUse};

/// Time for a TCP client to finish TLS and the WebSocket upgrade.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

impl AgentListener {
    /// Accepts agents over WebSocket until the task is dropped.
    ///
    /// TLS is chosen per ClientHello ([`AgentPortTls::select`]): enrollment requests go to
    /// [`crate::enroll::http`], everything else becomes a tunnel connection.
    pub async fn serve_ws(self: Arc<Self>, listener: TcpListener, tls: Arc<AgentPortTls>) {
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    transport::http_server::accept_backoff("agent-addr (TCP)", &e).await;
                    continue;
                }
            };
            let Some(permit) = self.gate.try_enter() else {
                // Before TLS: closing costs nothing, the agent retries after its spread.
                self.refused_busy("websocket");
                drop(tcp);
                continue;
            };
            let this = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(UPGRADE_TIMEOUT, upgrade(tcp, remote, &tls)).await {
                    Ok(Ok(Accepted::Tunnel(link))) => this.serve_connection(link, permit).await,
                    Ok(Ok(Accepted::Peer(stream))) => {
                        // Long-lived and not an agent: outside the handshake gate.
                        drop(permit);
                        crate::peers::serve::serve(*stream, remote, tls.peers.clone()).await
                    }
                    Ok(Ok(Accepted::Enroll(stream))) => {
                        // Enrollment has its own rate limit.
                        drop(permit);
                        crate::enroll::http::serve(*stream, tls.issuer.clone(), tls.rate.clone())
                            .await
                    }
                    Ok(Err(reason)) => {
                        tracing::info!(%remote, %reason, "agent WebSocket connection refused")
                    }
                    Err(_) => tracing::info!(%remote, "agent WebSocket upgrade timed out"),
                }
            });
        }
    }
}

/// What a TCP connection on the agent port turned out to be.
enum Accepted {
    /// A registered-to-be tunnel (WebSocket upgraded, multiplexed).
    Tunnel(TunnelConnection),
    /// An enrollment or renewal request, TLS established.
    Enroll(Box<tokio_rustls::server::TlsStream<TunnelTcp>>),
    /// Another replica, TLS established (its certificate still to be checked).
    Peer(Box<tokio_rustls::server::TlsStream<TunnelTcp>>),
}

/// TLS (config chosen by ALPN), then for tunnels the WebSocket upgrade.
// The path check's error type is tungstenite's callback signature, not ours.
#[allow(clippy::result_large_err)]
async fn upgrade(
    mut tcp: TcpStream,
    remote: std::net::SocketAddr,
    tls: &AgentPortTls,
) -> Result<Accepted, String> {
    let _ = tcp.set_nodelay(true);
    transport::socket::set_tcp_keepalive(&tcp);
    // A TLS connection starts with a handshake record (0x16). Anything else
    // is most likely plain HTTP: say so instead of a TLS alert it cannot read.
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(1) if first[0] == 0x16 => {}
        Ok(_) => {
            let body = format!("this port speaks TLS: agents connect with wss://<server>{TUNNEL_PATH} and a client certificate\n");
            let resp = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(resp.as_bytes()).await;
            let _ = tcp.shutdown().await;
            return Err("not TLS (plain HTTP?)".into());
        }
        Err(e) => return Err(e.to_string()),
    }
    let tcp = TunnelTcp::new(tcp);
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let (config, port_use) = tls.select(start.client_hello().alpn());
    let tls = start
        .into_stream(config)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    match port_use {
        PortUse::Enroll => return Ok(Accepted::Enroll(Box::new(tls))),
        PortUse::Peer => return Ok(Accepted::Peer(Box::new(tls))),
        PortUse::Tunnel => {}
    }
    let mut tls = tls;
    let (tcp, session) = tls.get_mut();
    transport::ws::keep_send_queue_short(tcp, session);
    let certificates = tls.get_ref().1.peer_certificates().map(<[_]>::to_vec);
    let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == TUNNEL_PATH {
            return Ok(resp);
        }
        let mut err = ErrorResponse::new(Some(format!(
            "unknown path {}; agents connect to {TUNNEL_PATH}\n",
            req.uri().path()
        )));
        *err.status_mut() = http::StatusCode::NOT_FOUND;
        Err(err)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(tls, check_path, Some(ws_config()))
        .await
        .map_err(|e| format!("WebSocket upgrade failed: {e}"))?;
    let mux = transport::mux::spawn(WsByteStream::new(ws), MuxRole::Server, Frames::Edge);
    Ok(Accepted::Tunnel(TunnelConnection::Ws {
        mux,
        peer: PeerInfo {
            remote,
            certificates,
        },
    }))
}
