//! Reading and writing `proto` control frames on a tunnel stream.
//!
//! Reads stop exactly at the end of the frame, so raw tunneled bytes that
//! follow a `DialResult` or `OpenStream` stay in the stream for the splice.

use std::time::Duration;

use bytes::BytesMut;
use proto::{DecodeError, EncodeError, FrameDecoder, Message};

use crate::stream::{StreamError, TunnelRecv, TunnelSend};

/// Why a control frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FramedError {
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("malformed frame: {0}")]
    Decode(#[from] DecodeError),
    #[error("cannot encode frame: {0}")]
    Encode(#[from] EncodeError),
    #[error("stream ended before a complete frame")]
    UnexpectedEof,
    #[error("no frame within {0:?}")]
    Timeout(Duration),
}

/// Writes one message.
pub async fn write_message(send: &mut TunnelSend, msg: &Message) -> Result<(), FramedError> {
    let mut buf = BytesMut::new();
    proto::encode(msg, &mut buf)?;
    send.write_chunk(buf.freeze()).await?;
    Ok(())
}

/// Reads one message, never consuming bytes past its end.
pub async fn read_message(recv: &mut TunnelRecv) -> Result<Message, FramedError> {
    let mut decoder = FrameDecoder::new();
    let mut scratch = [0u8; 512];
    loop {
        if let Some(msg) = decoder.next_message()? {
            return Ok(msg);
        }
        let want = decoder.wanted().min(scratch.len());
        let n = recv.read(&mut scratch[..want]).await?;
        if n == 0 {
            return Err(FramedError::UnexpectedEof);
        }
        decoder.push(&scratch[..n]);
    }
}

/// [`read_message`] with a deadline, for peers that connect and never speak.
pub async fn read_message_timeout(
    recv: &mut TunnelRecv,
    timeout: Duration,
) -> Result<Message, FramedError> {
    tokio::time::timeout(timeout, read_message(recv))
        .await
        .map_err(|_| FramedError::Timeout(timeout))?
}
