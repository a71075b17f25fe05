//! Stand-ins for edge services: echo (port-forward, exec), a byte source
//! (logs), a line writer (logs --follow).

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Deterministic, incompressible-looking test data.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

/// SHA-256 as hex.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Echoes every connection; on the client's EOF, finishes writing and half-closes.
pub async fn echo_server() -> std::io::Result<SocketAddr> {
    echo_server_on("127.0.0.1:0").await
}

/// [`echo_server`] on a chosen address.
pub async fn echo_server_on(addr: &str) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Sends `data` to every connection, then closes.
pub async fn source_server(data: Vec<u8>) -> std::io::Result<SocketAddr> {
    source_server_on("127.0.0.1:0", std::sync::Arc::new(data)).await
}

/// [`source_server`] on a chosen address (e.g. an edge namespace's IP).
pub async fn source_server_on(
    addr: &str,
    data: std::sync::Arc<Vec<u8>>,
) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let data = data.clone();
            tokio::spawn(async move {
                let _ = s.write_all(&data).await;
                let _ = s.shutdown().await;
                // Drain until the client closes, so the close is orderly.
                let mut sink = [0u8; 1024];
                while let Ok(n) = s.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// Writes `count` lines `line <i>\n`, one every `interval` (a `follow`-style log).
pub async fn line_server(count: usize, interval: Duration) -> std::io::Result<SocketAddr> {
    line_server_on("127.0.0.1:0", count, interval).await
}

/// [`line_server`] on a chosen address.
pub async fn line_server_on(
    addr: &str,
    count: usize,
    interval: Duration,
) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                for i in 0..count {
                    let line = format!("line {i}\n");
                    if s.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(interval).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// A loopback listener whose accept queue is full, so new connections to it
/// hang in SYN retries: a destination whose dial never answers. The returned
/// guard keeps the listener and the queue-filling connections alive.
pub async fn hanging_server() -> std::io::Result<(SocketAddr, HangingGuard)> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind("127.0.0.1:0".parse().map_err(std::io::Error::other)?)?;
    let listener = sock.listen(0)?;
    let addr = listener.local_addr()?;
    let mut fillers = Vec::new();
    // A backlog of 0 still queues one or two connections; fill it, with a
    // bound, until a connect no longer completes promptly.
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    Ok((
        addr,
        HangingGuard {
            _listener: listener,
            _fillers: fillers,
        },
    ))
}

/// Keeps a [`hanging_server`] hanging.
pub struct HangingGuard {
    _listener: TcpListener,
    _fillers: Vec<tokio::net::TcpStream>,
}
