//! Reads Konnectivity packets from a call's request stream.
//!
//! Flow control: the client's HTTP/2 window is given back as soon as bytes
//! move from h2 into the message decoder, so a message of any allowed size
//! flows through a window smaller than itself. Backpressure still holds,
//! because bytes are only pulled from h2 when the call is ready for the next
//! packet (its last DATA was written into the tunnel); until then h2 keeps
//! at most one window of unread bytes. What the decoder holds is bounded per
//! call (one message in progress, at most [`MAX_MESSAGE`](super::MAX_MESSAGE))
//! and for the process ([`budget`](super::budget)), and a message that stops
//! arriving half-way ends the call after the stall timeout.

use std::time::Duration;

use h2::RecvStream;
use proto::grpc::{status, GrpcFrameError, MessageDecoder};
use proto::konnectivity::{self, Packet, PacketError};

use super::budget::{Exhausted, Reservation, CALL_BUFFERS};
use super::MAX_MESSAGE;

/// Why the next packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("client stream failed: {0}")]
    Client(#[from] h2::Error),
    #[error(transparent)]
    Frame(#[from] GrpcFrameError),
    #[error("malformed Packet: {0}")]
    Packet(#[from] PacketError),
    #[error(transparent)]
    BuffersFull(#[from] Exhausted),
    #[error("message stalled: {received} of {expected} bytes received, none for {after:?} (--header-timeout)")]
    Stalled {
        received: usize,
        expected: usize,
        after: Duration,
    },
}

impl ReadError {
    /// The grpc-status to end the call with, or `None` when the client is
    /// gone and there is no one to tell.
    pub fn status(&self) -> Option<u32> {
        match self {
            ReadError::Client(_) => None,
            ReadError::Frame(e) => Some(e.grpc_status()),
            ReadError::Packet(_) => Some(status::INTERNAL),
            ReadError::BuffersFull(_) => Some(status::RESOURCE_EXHAUSTED),
            ReadError::Stalled { .. } => Some(status::DEADLINE_EXCEEDED),
        }
    }
}

/// The request side of one call.
pub struct PacketReader {
    recv: RecvStream,
    decoder: MessageDecoder,
    /// What the decoder holds, accounted in the process-wide budget.
    held: Reservation<'static>,
    /// How long a message in progress may go without a byte.
    stall_timeout: Duration,
}

impl PacketReader {
    pub fn new(recv: RecvStream, stall_timeout: Duration) -> Self {
        Self {
            recv,
            decoder: MessageDecoder::new(MAX_MESSAGE),
            held: CALL_BUFFERS.reservation(),
            stall_timeout,
        }
    }

    /// The next packet; `Ok(None)` when the client ended its stream cleanly.
    /// Cancel-safe: bytes are moved into the decoder in the poll that got them.
    pub async fn next_packet(&mut self) -> Result<Option<Packet>, ReadError> {
        loop {
            if let Some(msg) = self.decoder.next_message()? {
                // Shrinking never fails.
                let _ = self.held.resize(self.decoder.buffered());
                return Ok(Some(konnectivity::decode(&msg)?));
            }
            let chunk = if self.decoder.buffered() == 0 {
                self.recv.data().await
            } else {
                match tokio::time::timeout(self.stall_timeout, self.recv.data()).await {
                    Ok(c) => c,
                    Err(_) => {
                        return Err(ReadError::Stalled {
                            received: self.decoder.buffered(),
                            expected: self
                                .decoder
                                .pending_len()
                                .map_or(proto::grpc::PREFIX_LEN, |n| {
                                    n + proto::grpc::PREFIX_LEN
                                }),
                            after: self.stall_timeout,
                        })
                    }
                }
            };
            match chunk {
                Some(Ok(chunk)) => {
                    self.held.resize(self.decoder.buffered() + chunk.len())?;
                    self.decoder.push(&chunk);
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                }
                Some(Err(e)) => return Err(ReadError::Client(e)),
                None => {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}
