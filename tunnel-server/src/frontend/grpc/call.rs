//! One `/ProxyService/Proxy` call: DIAL_REQ, the dial, then DATA both ways
//! until CLOSE_REQ, the edge closing, or the client vanishing.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response};
use proto::grpc::{self, status};
use proto::konnectivity::{self, Packet};
use proto::DialTarget;
use tracing::Instrument;
use transport::idle::IdleClock;
use transport::splice::{Direction, Gathering};
use transport::stream::MAX_CHUNK;
use transport::{StreamError, TunnelRecv, TunnelSend};

use super::reader::{PacketReader, ReadError};
use super::request::{check_request, Refusal};
use crate::dial::{EdgeStream, Frontend};
use crate::frontend::FrontendContext;

/// connectIDs handed out by this server; unique for the life of the process.
static NEXT_CONNECT_ID: AtomicU64 = AtomicU64::new(1);

/// Largest payload of one DATA message we send, so that the whole gRPC
/// message (prefix, packet fields, payload) stays within 64 KiB.
const MAX_DATA_PAYLOAD: usize = 64 * 1024 - 64;

/// The `protocol` label of `tunnel_server_frontend_requests_total` for calls
/// (code = grpc-status) and for non-gRPC HTTP/2 requests (code = HTTP status).
const PROTOCOL_GRPC: &str = "grpc";
const PROTOCOL_HTTP2: &str = "http2";

/// Serves one request on an HTTP/2 connection.
pub async fn serve_call(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    ctx: Arc<FrontendContext>,
    forbidden: Option<Arc<str>>,
) {
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let checked = check_request(req.method().as_str(), req.uri().path(), content_type);
    let refusal = match (checked, forbidden) {
        (Err(r), _) => Some(r),
        (Ok(()), Some(reason)) => Some(Refusal::Grpc {
            code: status::PERMISSION_DENIED,
            message: reason.to_string(),
        }),
        (Ok(()), None) => None,
    };
    match refusal {
        Some(Refusal::Http { status, message }) => {
            tracing::info!(path = req.uri().path(), status, %message, "refusing HTTP/2 request");
            count(&ctx, PROTOCOL_HTTP2, status.into());
            refuse_http(&mut respond, status, &message);
            return;
        }
        Some(Refusal::Grpc { code, message }) => {
            tracing::info!(path = req.uri().path(), code, %message, "refusing gRPC call");
            count(&ctx, PROTOCOL_GRPC, code);
            refuse_grpc(&mut respond, code, &message);
            return;
        }
        None => {}
    }
    let send = match respond.send_response(grpc_headers(), false) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "client left before the response headers");
            return;
        }
    };
    let mut call = Call {
        reader: PacketReader::new(req.into_body(), ctx.header_timeout),
        send,
        ctx: ctx.clone(),
    };
    let end = call.run().await;
    let code = match end {
        End::Status(code, message) => {
            let _ = call.send.send_trailers(trailers(code, &message));
            code
        }
        End::ClientGone => {
            call.send.send_reset(h2::Reason::CANCEL);
            status::CANCELLED
        }
    };
    count(&ctx, PROTOCOL_GRPC, code);
}

/// How a call ends.
#[derive(Debug)]
enum End {
    /// Trailers with this grpc-status and message.
    Status(u32, String),
    /// The client reset the stream or its connection is gone: nothing to send.
    ClientGone,
}

impl End {
    fn ok() -> Self {
        End::Status(status::OK, String::new())
    }
}

impl From<ReadError> for End {
    fn from(e: ReadError) -> Self {
        match e.status() {
            Some(code) => End::Status(code, e.to_string()),
            None => End::ClientGone,
        }
    }
}

/// The client side of a call: its request stream and response stream.
struct Call {
    reader: PacketReader,
    send: SendStream<Bytes>,
    ctx: Arc<FrontendContext>,
}

impl Call {
    async fn run(&mut self) -> End {
        // Phase 1: the DIAL_REQ, within --header-timeout of the call's start.
        let timeout = self.ctx.header_timeout;
        let first = tokio::time::timeout(timeout, self.dial_request()).await;
        let (protocol, address, random) = match first {
            Ok(Ok(Some(req))) => req,
            Ok(Ok(None)) => return End::ok(),
            Ok(Err(e)) => return e.into(),
            Err(_) => {
                let message = format!("no DIAL_REQ within {timeout:?} (--header-timeout)");
                tracing::info!(%message, "ending gRPC call");
                return End::Status(status::DEADLINE_EXCEEDED, message);
            }
        };
        if !protocol.is_empty() && protocol != "tcp" {
            let error = format!("protocol {protocol:?} is not supported; use tcp");
            return self.dial_refused(random, error);
        }
        let target: DialTarget = match address.parse() {
            Ok(t) => t,
            Err(e) => return self.dial_refused(random, format!("bad address {address:?}: {e}")),
        };

        // Phase 2: the dial, cancelled by DIAL_CLS or the client leaving.
        let ctx = self.ctx.clone();
        let dial = ctx.dialer.dial(&target, Frontend::Grpc);
        tokio::pin!(dial);
        let result = loop {
            tokio::select! {
                r = &mut dial => break r,
                p = self.reader.next_packet() => {
                    let cancel = match p {
                        Ok(Some(Packet::DialClose { random: r })) if r == random => "DIAL_CLS",
                        Ok(Some(Packet::CloseRequest { .. })) => "CLOSE_REQ",
                        Ok(None) => "the client ended its stream",
                        Ok(Some(other)) => {
                            tracing::warn!(%target, packet = other.type_name(), "ignoring packet during a dial");
                            continue;
                        }
                        Err(e) => {
                            tracing::info!(%target, error = %e, "call ended during a dial; cancelling it");
                            self.cancelled();
                            return e.into();
                        }
                    };
                    tracing::info!(%target, random, by = cancel, "dial cancelled by the client");
                    self.cancelled();
                    return End::ok();
                }
            }
        };
        let stream = match result {
            Ok(s) => s,
            Err(e) => return self.dial_refused(random, e.to_string()),
        };

        // Phase 3: carry.
        let connect_id = NEXT_CONNECT_ID.fetch_add(1, Ordering::Relaxed) as i64;
        let span = tracing::info_span!("stream", node = %stream.node, stream_id = stream.stream_id,
            connect_id, %target, frontend = "grpc");
        let ok = Packet::DialResponse {
            error: String::new(),
            connect_id,
            random,
        };
        if self.send_packet(&ok).is_err() {
            return End::ClientGone;
        }
        self.carry(stream, connect_id).instrument(span).await
    }

    /// Reads until the DIAL_REQ: its protocol, address and random.
    async fn dial_request(&mut self) -> Result<Option<(String, String, i64)>, ReadError> {
        loop {
            match self.reader.next_packet().await? {
                Some(Packet::DialRequest {
                    protocol,
                    address,
                    random,
                }) => return Ok(Some((protocol, address, random))),
                Some(other) => tracing::warn!(
                    packet = other.type_name(),
                    "ignoring packet before DIAL_REQ"
                ),
                None => return Ok(None),
            }
        }
    }

    /// Answers DIAL_RSP with an error; the call then ends.
    fn dial_refused(&mut self, random: i64, error: String) -> End {
        let rsp = Packet::DialResponse {
            error,
            connect_id: 0,
            random,
        };
        match self.send_packet(&rsp) {
            Ok(()) => End::ok(),
            Err(_) => End::ClientGone,
        }
    }

    fn cancelled(&self) {
        self.ctx
            .dialer
            .metrics()
            .streams_total
            .with_label_values(&[Frontend::Grpc.as_str(), "cancelled"])
            .inc();
    }

    /// Moves DATA both ways until one side closes.
    async fn carry(&mut self, stream: EdgeStream, connect_id: i64) -> End {
        let EdgeStream {
            send: mut to_edge,
            recv: mut from_edge,
            node,
            _active,
            ..
        } = stream;
        let dialer = self.ctx.dialer.clone();
        let counter = dialer.byte_counter(&node);
        // --stream-idle-timeout: any DATA either way restarts the clock.
        let idle = dialer.idle_timeout();
        let clock = IdleClock::new();
        let moved = |dir: Direction, n: usize| {
            clock.touch();
            counter(dir, n)
        };
        let Call { reader, send, .. } = self;
        let outcome = {
            let up = client_to_edge(reader, &mut to_edge, connect_id, &moved);
            let down = edge_to_client(&mut from_edge, send, connect_id, &moved);
            tokio::pin!(up, down);
            tokio::select! {
                u = &mut up => match u {
                    // The edge got a FIN; keep carrying its answer.
                    Up::ClientEnded => tokio::select! {
                        d = &mut down => Outcome::Down(d),
                        _ = clock.expired(idle) => Outcome::Idle,
                    },
                    other => Outcome::Up(other),
                },
                d = &mut down => Outcome::Down(d),
                _ = clock.expired(idle) => Outcome::Idle,
            }
        };
        let close_rsp = |error: String| Packet::CloseResponse { error, connect_id };
        match outcome {
            Outcome::Idle => {
                dialer.record_idle_end(&node, Frontend::Grpc);
                to_edge.reset(proto::codes::STREAM_CANCELLED);
                from_edge.stop(proto::codes::STREAM_CANCELLED);
                let limit = idle.unwrap_or_default();
                self.close_with(close_rsp(format!(
                    "no data either way for {limit:?} (--stream-idle-timeout)"
                )))
            }
            Outcome::Up(Up::CloseRequested) => {
                tracing::debug!("CLOSE_REQ from the client");
                to_edge.finish().await;
                from_edge.stop(proto::codes::STREAM_CANCELLED);
                self.close_with(close_rsp(String::new()))
            }
            Outcome::Up(Up::ClientGone(e)) | Outcome::Down(Down::ClientGone(e)) => {
                tracing::info!(error = %e, "client gone; releasing the edge stream");
                to_edge.reset(proto::codes::STREAM_CANCELLED);
                from_edge.stop(proto::codes::STREAM_CANCELLED);
                End::ClientGone
            }
            Outcome::Up(Up::Malformed(end)) => {
                tracing::info!(end = ?end, "bad input from the client; resetting the edge stream");
                to_edge.reset(proto::codes::STREAM_CANCELLED);
                from_edge.stop(proto::codes::STREAM_CANCELLED);
                end
            }
            Outcome::Up(Up::EdgeFailed(e)) => {
                tracing::debug!(error = %e, "edge stream failed while sending");
                from_edge.stop(proto::codes::STREAM_CANCELLED);
                self.close_with(close_rsp(format!("edge connection failed: {e}")))
            }
            Outcome::Down(Down::EdgeClosed) | Outcome::Up(Up::ClientEnded) => {
                tracing::debug!("edge closed first");
                to_edge.finish().await;
                self.close_with(close_rsp(String::new()))
            }
            Outcome::Down(Down::EdgeFailed(e)) => {
                tracing::debug!(error = %e, "edge stream failed while receiving");
                to_edge.reset(proto::codes::STREAM_CANCELLED);
                self.close_with(close_rsp(format!("edge connection failed: {e}")))
            }
        }
    }

    /// Sends a final CLOSE_RSP; the call then ends with OK.
    fn close_with(&mut self, rsp: Packet) -> End {
        match self.send_packet(&rsp) {
            Ok(()) => End::ok(),
            Err(_) => End::ClientGone,
        }
    }

    fn send_packet(&mut self, p: &Packet) -> Result<(), h2::Error> {
        self.send
            .send_data(grpc::frame(&konnectivity::encode(p)), false)
    }
}

enum Outcome {
    Up(Up),
    Down(Down),
    /// No DATA either way for `--stream-idle-timeout`.
    Idle,
}

/// How the client→edge direction ended.
enum Up {
    CloseRequested,
    ClientEnded,
    ClientGone(String),
    Malformed(End),
    EdgeFailed(StreamError),
}

/// How the edge→client direction ended.
enum Down {
    EdgeClosed,
    EdgeFailed(StreamError),
    ClientGone(String),
}

/// Client → edge: DATA into the tunnel until CLOSE_REQ or the client ends.
async fn client_to_edge(
    reader: &mut PacketReader,
    to_edge: &mut TunnelSend,
    connect_id: i64,
    counter: &(impl Fn(Direction, usize) + Send + Sync),
) -> Up {
    loop {
        match reader.next_packet().await {
            Ok(Some(Packet::Data {
                connect_id: c,
                data,
                ..
            })) => {
                if c != connect_id && c != 0 {
                    return Up::Malformed(End::Status(
                        status::INVALID_ARGUMENT,
                        format!("DATA for connectID {c} on the call of connectID {connect_id}"),
                    ));
                }
                if !data.is_empty() {
                    let n = data.len();
                    if let Err(e) = to_edge.write_chunk(data).await {
                        return Up::EdgeFailed(e);
                    }
                    counter(Direction::ToTunnel, n);
                }
            }
            Ok(Some(Packet::CloseRequest { .. })) => return Up::CloseRequested,
            Ok(Some(other)) => {
                tracing::debug!(
                    packet = other.type_name(),
                    "ignoring packet on an open connection"
                );
            }
            Ok(None) => {
                to_edge.finish().await;
                return Up::ClientEnded;
            }
            Err(ReadError::Client(e)) => return Up::ClientGone(e.to_string()),
            Err(e) => return Up::Malformed(e.into()),
        }
    }
}

/// Edge → client: tunnel chunks as DATA, each read only once the client's
/// window has room (h2 queues at most one chunk beyond it). A message
/// carries every chunk already received ([`Gathering`]), not one QUIC
/// packet's worth.
async fn edge_to_client(
    from_edge: &mut TunnelRecv,
    send: &mut SendStream<Bytes>,
    connect_id: i64,
    counter: &(impl Fn(Direction, usize) + Send + Sync),
) -> Down {
    let mut from_edge = Gathering::new(from_edge);
    loop {
        send.reserve_capacity(MAX_CHUNK + 32);
        // poll_capacity only reports increases, so look at what is there first.
        while send.capacity() == 0 {
            match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Down::ClientGone(e.to_string()),
                None => return Down::ClientGone("response stream closed".into()),
            }
        }
        let chunk = tokio::select! {
            c = from_edge.next() => c,
            r = poll_fn(|cx| send.poll_reset(cx)) => {
                return Down::ClientGone(match r {
                    Ok(reason) => format!("client reset the stream ({reason})"),
                    Err(e) => e.to_string(),
                });
            }
        };
        match chunk {
            Ok(Some(mut data)) => {
                counter(Direction::FromTunnel, data.len());
                while !data.is_empty() {
                    let piece = data.split_to(data.len().min(MAX_DATA_PAYLOAD));
                    let msg = grpc::frame(&konnectivity::encode(&Packet::Data {
                        connect_id,
                        error: String::new(),
                        data: piece,
                    }));
                    if let Err(e) = send.send_data(msg, false) {
                        return Down::ClientGone(e.to_string());
                    }
                }
            }
            Ok(None) => return Down::EdgeClosed,
            Err(e) => return Down::EdgeFailed(e),
        }
    }
}

fn grpc_headers() -> Response<()> {
    let mut r = Response::new(());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

fn trailers(code: u32, message: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("grpc-status", HeaderValue::from(code));
    if !message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&grpc::encode_grpc_message(message)) {
            h.insert("grpc-message", v);
        }
    }
    h
}

/// A trailers-only gRPC answer (headers carrying the status, stream ended).
fn refuse_grpc(respond: &mut SendResponse<Bytes>, code: u32, message: &str) {
    let mut r = grpc_headers();
    r.headers_mut().extend(trailers(code, message));
    let _ = respond.send_response(r, true);
}

/// A plain HTTP answer with a text body naming the cause.
fn refuse_http(respond: &mut SendResponse<Bytes>, status: u16, message: &str) {
    let mut r = Response::new(());
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(mut s) = respond.send_response(r, false) {
        let _ = s.send_data(Bytes::from(format!("{message}\n")), true);
    }
}

fn count(ctx: &FrontendContext, protocol: &str, code: u32) {
    ctx.dialer
        .metrics()
        .frontend_requests
        .with_label_values(&[protocol, &code.to_string()])
        .inc();
}
