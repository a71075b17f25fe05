//! A bare HTTP/2 client that writes frames by hand, to send exactly the
//! bytes another implementation sends (grpc-go's request headers with a
//! socket path as `:authority`, say) where a library client would refuse to.
//!
//! Header blocks are HPACK "literal without indexing, new name" fields, which
//! every decoder must accept; nothing is Huffman-coded. Response header
//! blocks are not decoded (only their flags are looked at): the point is
//! what the server accepts, and the gRPC messages it answers with.

use std::path::Path;

use anyhow::{bail, Context};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The connection preface every HTTP/2 client starts with.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types used here.
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
}

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// The default SETTINGS_MAX_FRAME_SIZE, which we never raise.
const MAX_FRAME: usize = 16_384;

/// One frame as read.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Bytes,
}

impl Frame {
    pub fn ends_stream(&self) -> bool {
        matches!(self.kind, kind::DATA | kind::HEADERS) && self.flags & END_STREAM != 0
    }

    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::RST_STREAM => 0,
            kind::GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// What the server sent on a stream, as far as a test cares.
#[derive(Debug)]
pub enum Event {
    Headers { end_stream: bool },
    Data { payload: Bytes, end_stream: bool },
    Reset(u32),
    GoAway(u32),
}

/// An HTTP/2 connection driven frame by frame.
pub struct RawH2 {
    sock: UnixStream,
}

impl RawH2 {
    /// Connects, writes the preface and an empty SETTINGS frame.
    pub async fn connect_uds(path: &Path) -> anyhow::Result<Self> {
        let mut sock = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting {}", path.display()))?;
        sock.write_all(PREFACE).await?;
        let mut c = Self { sock };
        c.write_frame(kind::SETTINGS, 0, 0, &[]).await?;
        Ok(c)
    }

    /// Sends a HEADERS frame with these fields (pseudo-headers first, as given).
    pub async fn send_headers(
        &mut self,
        stream: u32,
        fields: &[(&str, &str)],
        end_stream: bool,
    ) -> anyhow::Result<()> {
        let block = encode_literal_block(fields);
        if block.len() > MAX_FRAME {
            bail!("header block of {} bytes needs CONTINUATION", block.len());
        }
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.write_frame(kind::HEADERS, flags, stream, &block).await
    }

    /// Sends DATA frames carrying `data` (split at the default frame size).
    pub async fn send_data(&mut self, stream: u32, data: &[u8], end: bool) -> anyhow::Result<()> {
        let mut chunks = data.chunks(MAX_FRAME).peekable();
        if chunks.peek().is_none() {
            return self
                .write_frame(kind::DATA, if end { END_STREAM } else { 0 }, stream, &[])
                .await;
        }
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            let flags = if end && last { END_STREAM } else { 0 };
            self.write_frame(kind::DATA, flags, stream, c).await?;
        }
        Ok(())
    }

    /// The next event of `stream`: answers SETTINGS and PING, gives back
    /// window for every DATA frame, skips frames of other streams.
    pub async fn next_event(&mut self, stream: u32) -> anyhow::Result<Event> {
        loop {
            let f = self.read_frame().await?;
            match f.kind {
                kind::SETTINGS if f.flags & ACK == 0 => {
                    self.write_frame(kind::SETTINGS, ACK, 0, &[]).await?
                }
                kind::PING if f.flags & ACK == 0 => {
                    let p = f.payload.clone();
                    self.write_frame(kind::PING, ACK, 0, &p).await?
                }
                kind::GOAWAY => return Ok(Event::GoAway(f.error_code().unwrap_or(0))),
                _ if f.stream != stream => {}
                kind::HEADERS => {
                    return Ok(Event::Headers {
                        end_stream: f.ends_stream(),
                    })
                }
                kind::DATA => {
                    let n = f.payload.len() as u32;
                    if n > 0 {
                        self.window_update(0, n).await?;
                        if !f.ends_stream() {
                            self.window_update(stream, n).await?;
                        }
                    }
                    return Ok(Event::Data {
                        end_stream: f.ends_stream(),
                        payload: f.payload,
                    });
                }
                kind::RST_STREAM => return Ok(Event::Reset(f.error_code().unwrap_or(0))),
                _ => {}
            }
        }
    }

    async fn window_update(&mut self, stream: u32, n: u32) -> anyhow::Result<()> {
        self.write_frame(kind::WINDOW_UPDATE, 0, stream, &n.to_be_bytes())
            .await
    }

    async fn write_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> anyhow::Result<()> {
        let mut f = BytesMut::with_capacity(9 + payload.len());
        let len = u32::try_from(payload.len())?;
        f.put_slice(&len.to_be_bytes()[1..]);
        f.put_u8(kind);
        f.put_u8(flags);
        f.put_u32(stream & 0x7fff_ffff);
        f.put_slice(payload);
        self.sock.write_all(&f).await.context("writing a frame")?;
        Ok(())
    }

    /// Reads one frame; refuses lengths over the default maximum, which
    /// the server may not exceed since we never raised it.
    pub async fn read_frame(&mut self) -> anyhow::Result<Frame> {
        let mut head = [0u8; 9];
        self.sock
            .read_exact(&mut head)
            .await
            .context("reading a frame header")?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        if len > MAX_FRAME {
            bail!("frame of {len} bytes exceeds SETTINGS_MAX_FRAME_SIZE");
        }
        let mut payload = vec![0u8; len];
        self.sock
            .read_exact(&mut payload)
            .await
            .context("reading a frame payload")?;
        Ok(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload: payload.into(),
        })
    }
}

/// An HPACK header block of "literal header field without indexing — new
/// name" representations (RFC 7541 §6.2.2), no Huffman coding.
pub fn encode_literal_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        for s in [name, value] {
            encode_int(&mut out, s.len(), 7, 0x00);
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// HPACK integer with an N-bit prefix (RFC 7541 §5.1).
fn encode_int(out: &mut Vec<u8>, mut n: usize, prefix_bits: u8, first: u8) {
    let max = (1usize << prefix_bits) - 1;
    if n < max {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_rfc7541_examples() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix.
        let mut out = Vec::new();
        encode_int(&mut out, 10, 5, 0);
        assert_eq!(out, [10]);
        out.clear();
        encode_int(&mut out, 1337, 5, 0);
        assert_eq!(out, [31, 154, 10]);
    }

    #[test]
    fn literal_fields_match_rfc7541_c22() {
        // C.2.2 "Literal Header Field without Indexing" uses an indexed
        // name; the new-name form differs only in the name part.
        let block = encode_literal_block(&[(":path", "/sample/path")]);
        let mut want = vec![0x00, 5];
        want.extend_from_slice(b":path");
        want.push(12);
        want.extend_from_slice(b"/sample/path");
        assert_eq!(block, want);
    }
}
