//! What replicas say to each other on a peer stream: one request, one
//! answer, each a length-prefixed JSON object; after a successful dial the
//! stream carries the tunneled bytes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use transport::{StreamError, TunnelRecv, TunnelSend};

/// Largest request or answer accepted.
const MAX_LEN: usize = 16 * 1024;

/// What the asking replica wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Is the destination's agent connected to you? (nothing is dialed)
    Lookup,
    /// Dial it through your agent; the stream carries it from then on.
    Dial,
}

/// A request; `node` set routes to that node whatever the target host is
/// (`--forward`, SNI), otherwise the target's host picks the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub op: Op,
    pub node: Option<String>,
    pub target: String,
    /// The asking replica's front end, for logs.
    pub frontend: String,
}

/// The answer: `status` 200 is found / connected, anything else the HTTP
/// status a local dial failure has, with its metric label and message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// `--server-id` of the answering replica, for logs and messages.
    pub server_id: String,
    /// Random per process: lets a replica recognise (and skip) itself even
    /// when it reaches its own address or two replicas share a `--server-id`.
    #[serde(default)]
    pub instance: u64,
    pub status: u16,
    pub label: String,
    pub message: String,
}

/// Why a request or answer could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("stream closed before the message ended")]
    Eof,
    #[error("message of {0} bytes is over the limit of {MAX_LEN}")]
    TooLong(usize),
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes one message.
pub async fn write<T: Serialize>(send: &mut TunnelSend, msg: &T) -> Result<(), WireError> {
    let body = serde_json::to_vec(msg)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&body);
    send.write_all(&frame).await?;
    Ok(())
}

/// Reads one message, never consuming bytes past its end.
pub async fn read<T: DeserializeOwned>(recv: &mut TunnelRecv) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    read_exact(recv, &mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_LEN {
        return Err(WireError::TooLong(len));
    }
    let mut body = vec![0u8; len];
    read_exact(recv, &mut body).await?;
    Ok(serde_json::from_slice(&body)?)
}

async fn read_exact(recv: &mut TunnelRecv, buf: &mut [u8]) -> Result<(), WireError> {
    let mut at = 0;
    while at < buf.len() {
        match recv.read(&mut buf[at..]).await? {
            0 => return Err(WireError::Eof),
            n => at += n,
        }
    }
    Ok(())
}
