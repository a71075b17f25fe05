//! `--transparent-addr`: connections redirected here by an iptables/nftables
//! `REDIRECT` rule, routed by the destination the client dialed.
//!
//! A client that dials a node IP (`https://10.0.0.5:10250`) sends neither a
//! proxy request nor, for an IP, a server name. The `REDIRECT` in this network
//! namespace's `nat OUTPUT`/`PREROUTING` chain keeps the original destination
//! in conntrack, readable with `SO_ORIGINAL_DST` (IPv4) or
//! `IP6T_SO_ORIGINAL_DST` (IPv6). That address is routed like a CONNECT to
//! it (the node whose certificate carries the IP) and the bytes are carried
//! untouched. See docs/operations.md for the rules and their scope.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use proto::{DialTarget, Host};
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;
use transport::http_server::accept_backoff;

use super::splice_to_edge;
use crate::dial::{Dialer, Frontend};

/// Accepts redirected connections until the task is dropped.
pub async fn serve(listener: TcpListener, dialer: Arc<Dialer>) {
    loop {
        match listener.accept().await {
            Ok((sock, peer)) => {
                let _ = sock.set_nodelay(true);
                tokio::spawn(connection(sock, peer, dialer.clone()));
            }
            Err(e) => accept_backoff("transparent-addr", &e).await,
        }
    }
}

/// Where a connection was headed before the redirect, or why that is unknown.
#[derive(Debug, thiserror::Error)]
enum OriginalDst {
    #[error("no original destination (SO_ORIGINAL_DST: {0}); was it redirected by a nat rule?")]
    Unknown(io::Error),
    #[error("dialed the listener itself ({0}), not a redirected destination")]
    NotRedirected(SocketAddr),
}

impl OriginalDst {
    fn reason(&self) -> &'static str {
        match self {
            OriginalDst::Unknown(_) => "no_original_dst",
            OriginalDst::NotRedirected(_) => "not_redirected",
        }
    }
}

/// The pre-REDIRECT destination of `sock` (IPv4, IPv6, or IPv4 on a
/// dual-stack socket).
pub fn original_dst(sock: &TcpStream) -> io::Result<SocketAddr> {
    let s = socket2::SockRef::from(sock);
    let v4_first = match sock.local_addr()? {
        SocketAddr::V4(_) => true,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    let addr = if v4_first {
        s.original_dst_v4().or_else(|_| s.original_dst_v6())?
    } else {
        s.original_dst_v6().or_else(|_| s.original_dst_v4())?
    };
    addr.as_socket()
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .ok_or_else(|| io::Error::other("original destination is not an IP address"))
}

fn destination(sock: &TcpStream) -> Result<SocketAddr, OriginalDst> {
    let dst = original_dst(sock).map_err(OriginalDst::Unknown)?;
    match sock.local_addr() {
        Ok(local) if SocketAddr::new(local.ip().to_canonical(), local.port()) == dst => {
            Err(OriginalDst::NotRedirected(dst))
        }
        _ => Ok(dst),
    }
}

async fn connection(sock: TcpStream, peer: SocketAddr, dialer: Arc<Dialer>) {
    let dst = match destination(&sock) {
        Ok(d) => d,
        Err(e) => {
            tracing::info!(%peer, reason = e.reason(), error = %e, "transparent connection refused");
            dialer
                .metrics()
                .passthrough_refused
                .with_label_values(&[Frontend::Transparent.as_str(), e.reason()])
                .inc();
            return;
        }
    };
    let target = DialTarget::new(Host::Ip(dst.ip()), dst.port());
    // The protocol is unknown, so a failure is reported the TCP way: the
    // dialer logs and counts it, and the client sees its connection close.
    let Ok(stream) = dialer.dial(&target, Frontend::Transparent).await else {
        return;
    };
    let span = tracing::info_span!("stream", node = %stream.node,
        stream_id = stream.stream_id, %target);
    splice_to_edge(
        sock,
        &dialer,
        stream,
        bytes::Bytes::new(),
        Frontend::Transparent,
    )
    .instrument(span)
    .await;
}
