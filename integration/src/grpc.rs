//! A Konnectivity gRPC client, written from the proto in the reference
//! (`prost` messages over an `h2` client), to test the server's gRPC front
//! end the way kube-apiserver's konnectivity-client uses it: one connection
//! and one `/ProxyService/Proxy` call per dial.
//!
//! It deliberately shares nothing with the server's hand-written codec
//! (`proto::konnectivity`), so the two check each other.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};

/// The proto's `Packet`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Packet {
    #[prost(enumeration = "PacketType", tag = "1")]
    pub r#type: i32,
    #[prost(oneof = "packet::Payload", tags = "2, 3, 4, 5, 6, 7, 8")]
    pub payload: Option<packet::Payload>,
}

/// The proto's `Packet.payload` oneof.
pub mod packet {
    /// One of the payload messages.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Payload {
        #[prost(message, tag = "2")]
        DialRequest(super::DialRequest),
        #[prost(message, tag = "3")]
        DialResponse(super::DialResponse),
        #[prost(message, tag = "4")]
        Data(super::Data),
        #[prost(message, tag = "5")]
        CloseRequest(super::CloseRequest),
        #[prost(message, tag = "6")]
        CloseResponse(super::CloseResponse),
        #[prost(message, tag = "7")]
        CloseDial(super::CloseDial),
        #[prost(message, tag = "8")]
        Drain(super::Drain),
    }
}

/// The proto's `PacketType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PacketType {
    DialReq = 0,
    DialRsp = 1,
    CloseReq = 2,
    CloseRsp = 3,
    Data = 4,
    DialCls = 5,
    Drain = 6,
}

/// The proto's `DialRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DialRequest {
    #[prost(string, tag = "1")]
    pub protocol: String,
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(int64, tag = "3")]
    pub random: i64,
}

/// The proto's `DialResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DialResponse {
    #[prost(string, tag = "1")]
    pub error: String,
    #[prost(int64, tag = "2")]
    pub connect_id: i64,
    #[prost(int64, tag = "3")]
    pub random: i64,
}

/// The proto's `CloseRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseRequest {
    #[prost(int64, tag = "1")]
    pub connect_id: i64,
}

/// The proto's `CloseResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseResponse {
    #[prost(string, tag = "1")]
    pub error: String,
    #[prost(int64, tag = "2")]
    pub connect_id: i64,
}

/// The proto's `CloseDial` (DIAL_CLS).
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseDial {
    #[prost(int64, tag = "1")]
    pub random: i64,
}

/// The proto's `Data`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Data {
    #[prost(int64, tag = "1")]
    pub connect_id: i64,
    #[prost(string, tag = "2")]
    pub error: String,
    #[prost(bytes = "bytes", tag = "3")]
    pub data: Bytes,
}

/// The proto's `Drain`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Drain {}

pub use packet::Payload;

/// DIAL_REQ{tcp, address, random}.
pub fn dial_req(address: &str, random: i64) -> Packet {
    Packet {
        r#type: PacketType::DialReq as i32,
        payload: Some(Payload::DialRequest(DialRequest {
            protocol: "tcp".into(),
            address: address.into(),
            random,
        })),
    }
}

/// DATA{connect_id, data}.
pub fn data(connect_id: i64, data: Bytes) -> Packet {
    Packet {
        r#type: PacketType::Data as i32,
        payload: Some(Payload::Data(Data {
            connect_id,
            error: String::new(),
            data,
        })),
    }
}

/// CLOSE_REQ{connect_id}.
pub fn close_req(connect_id: i64) -> Packet {
    Packet {
        r#type: PacketType::CloseReq as i32,
        payload: Some(Payload::CloseRequest(CloseRequest { connect_id })),
    }
}

/// DIAL_CLS{random}.
pub fn dial_cls(random: i64) -> Packet {
    Packet {
        r#type: PacketType::DialCls as i32,
        payload: Some(Payload::CloseDial(CloseDial { random })),
    }
}

/// The end of a call: grpc-status and grpc-message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    pub code: u32,
    pub message: String,
}

fn status_from(headers: &http::HeaderMap) -> Option<GrpcStatus> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Some(GrpcStatus { code, message })
}

/// The path kube-apiserver calls.
pub const PROXY_PATH: &str = "/ProxyService/Proxy";

/// Sending half of a call.
pub struct CallSender {
    send: SendStream<Bytes>,
}

/// Receiving half of a call.
pub struct CallReceiver {
    response: Option<ResponseFuture>,
    recv: Option<RecvStream>,
    buf: BytesMut,
    /// Set once the call ended: its grpc-status (trailers or trailers-only).
    pub status: Option<GrpcStatus>,
    /// The HTTP status of the response (set once the headers arrived).
    pub http_status: Option<u16>,
    /// Size of the largest gRPC message received (prefix included).
    pub largest_message: usize,
}

/// One call on its own HTTP/2 connection, like kube-apiserver makes per dial.
/// Dropping it (or its [`ConnGuard`]) closes the connection.
pub struct Call {
    pub tx: CallSender,
    pub rx: CallReceiver,
    pub conn: ConnGuard,
}

/// Keeps the task driving a call's HTTP/2 connection; dropping it closes the socket.
pub struct ConnGuard(tokio::task::JoinHandle<()>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Call {
    /// Opens a connection on `io` and starts a call to `path` with the
    /// given content type (`application/grpc` for real calls).
    pub async fn open<S>(io: S, path: &str, content_type: Option<&str>) -> anyhow::Result<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (client, conn) = h2::client::handshake(io)
            .await
            .context("HTTP/2 handshake")?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.context("HTTP/2 connection ready")?;
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("http://localhost{path}"))
            .header("te", "trailers");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let (response, send) = client
            .send_request(req.body(())?, false)
            .context("sending the request")?;
        Ok(Self {
            tx: CallSender { send },
            rx: CallReceiver {
                response: Some(response),
                recv: None,
                buf: BytesMut::new(),
                status: None,
                http_status: None,
                largest_message: 0,
            },
            conn: ConnGuard(conn),
        })
    }

    /// A `/ProxyService/Proxy` call on a new Unix-socket connection.
    pub async fn uds(path: &Path) -> anyhow::Result<Self> {
        let sock = tokio::net::UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting {}", path.display()))?;
        Self::open(sock, PROXY_PATH, Some("application/grpc")).await
    }

    /// DIAL_REQ and the DIAL_RSP it gets.
    pub async fn dial(&mut self, address: &str, random: i64) -> anyhow::Result<DialResponse> {
        self.tx.send(&dial_req(address, random)).await?;
        match self.rx.recv().await? {
            Some(Packet {
                payload: Some(Payload::DialResponse(r)),
                ..
            }) => Ok(r),
            other => bail!(
                "expected DIAL_RSP, got {other:?} (status {:?})",
                self.rx.status
            ),
        }
    }
}

impl CallSender {
    /// Sends one packet, waiting for window so nothing queues without bound.
    pub async fn send(&mut self, p: &Packet) -> anyhow::Result<()> {
        let body = p.encode_to_vec();
        let mut framed = BytesMut::with_capacity(5 + body.len());
        framed.put_u8(0);
        framed.put_u32(body.len() as u32);
        framed.extend_from_slice(&body);
        self.send_raw(framed.freeze()).await
    }

    /// Sends bytes as they are (for malformed-input tests).
    pub async fn send_raw(&mut self, bytes: Bytes) -> anyhow::Result<()> {
        self.send.reserve_capacity(bytes.len());
        loop {
            if self.send.capacity() > 0 {
                break;
            }
            match std::future::poll_fn(|cx| self.send.poll_capacity(cx)).await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("stream closed"),
            }
        }
        self.send.send_data(bytes, false)?;
        Ok(())
    }

    /// Ends our side of the stream (END_STREAM).
    pub fn end(&mut self) -> anyhow::Result<()> {
        self.send.send_data(Bytes::new(), true)?;
        Ok(())
    }

    /// Resets the stream (RST_STREAM CANCEL), as a cancelled Go context does.
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }
}

impl CallReceiver {
    /// The next packet, or `None` when the call ended (then [`Self::status`] is set).
    pub async fn recv(&mut self) -> anyhow::Result<Option<Packet>> {
        if let Some(resp) = self.response.take() {
            let resp = resp.await.context("awaiting the response headers")?;
            self.http_status = Some(resp.status().as_u16());
            if let Some(s) = status_from(resp.headers()) {
                // Trailers-only response.
                self.status = Some(s);
                return Ok(None);
            }
            self.recv = Some(resp.into_body());
        }
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    self.largest_message = self.largest_message.max(5 + len);
                    self.buf.advance(5);
                    let msg = self.buf.split_to(len);
                    return Ok(Some(Packet::decode(msg.freeze())?));
                }
            }
            let Some(recv) = self.recv.as_mut() else {
                return Ok(None);
            };
            match recv.data().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    self.buf.extend_from_slice(&chunk);
                }
                None => {
                    let trailers = recv.trailers().await?;
                    self.status = trailers.as_ref().and_then(status_from);
                    self.recv = None;
                    if !self.buf.is_empty() {
                        bail!("stream ended inside a message");
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// The whole body of a non-gRPC answer, as text.
    pub async fn text_body(&mut self) -> anyhow::Result<String> {
        if let Some(resp) = self.response.take() {
            let resp = resp.await?;
            self.http_status = Some(resp.status().as_u16());
            self.recv = Some(resp.into_body());
        }
        let recv = self.recv.as_mut().ok_or_else(|| anyhow!("no body"))?;
        let mut out = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            out.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Packet type of a received packet, for assertions.
pub fn type_of(p: &Packet) -> Option<PacketType> {
    PacketType::try_from(p.r#type).ok()
}
