//! A Konnectivity gRPC dial as a plain byte stream, so the throughput,
//! latency and memory phases run unchanged over the gRPC front end.
//!
//! Each dial is what kube-apiserver's konnectivity client does in GRPC mode:
//! a new Unix-socket connection, an HTTP/2 handshake, one
//! `/ProxyService/Proxy` call, DIAL_REQ → DIAL_RSP; then DATA packets both
//! ways and CLOSE_REQ when the caller drops the stream. The test client in
//! [`crate::grpc`] (prost + h2, independent of the server's codec) does the
//! protocol; two pump tasks join it to one end of an in-memory pipe.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::bail;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::dial::Conn;
use crate::grpc::{close_req, data, Call, Payload};

/// Largest DATA packet the bench sends: the Go client's `io.Copy` buffer.
const PACKET: usize = 32 * 1024;
/// Bytes buffered in the pipe between the caller and the pumps.
const PIPE: usize = 256 * 1024;

/// Dials `target` through the gRPC front end on `uds`.
pub async fn dial(uds: &Path, target: SocketAddr) -> anyhow::Result<Conn> {
    let mut call = Call::uds(uds).await?;
    let rsp = call.dial(&target.to_string(), rand::random()).await?;
    if !rsp.error.is_empty() {
        bail!("DIAL_RSP for {target}: {}", rsp.error);
    }
    let id = rsp.connect_id;
    let (app, pipe) = tokio::io::duplex(PIPE);
    let (mut from_app, mut to_app) = tokio::io::split(pipe);
    let Call {
        mut tx,
        mut rx,
        conn,
    } = call;
    tokio::spawn(async move {
        let _conn = conn;
        let up = async move {
            let mut buf = vec![0u8; PACKET];
            loop {
                match from_app.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let chunk = Bytes::copy_from_slice(&buf[..n]);
                        if tx.send(&data(id, chunk)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = tx.send(&close_req(id)).await;
        };
        let down = async move {
            while let Ok(Some(p)) = rx.recv().await {
                let written = match p.payload {
                    Some(Payload::Data(d)) => to_app.write_all(&d.data).await.is_ok(),
                    Some(Payload::CloseResponse(_)) => false,
                    _ => true,
                };
                if !written {
                    break;
                }
            }
            let _ = to_app.shutdown().await;
        };
        tokio::join!(up, down);
    });
    Ok(Box::new(app))
}
