//! The gRPC front end fed frame by frame with what real clients send, which
//! a library client would not let us send: grpc-go (kube-apiserver's
//! konnectivity-client) puts the socket path in `:authority`, grpc-core a
//! %-encoded path, other stacks an empty value or none. The h2 crate used
//! to reset such streams with PROTOCOL_ERROR (third_party/h2/PATCHES.md);
//! these tests fail without that patch.

use std::net::SocketAddr;
use std::path::Path;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use integration::grpc::{close_req, data, dial_req, Packet, Payload};
use integration::raw_h2::{Event, RawH2};
use integration::services::echo_server;
use integration::{Cluster, ClusterOptions};
use prost::Message as _;

/// HTTP/2 error code PROTOCOL_ERROR.
const PROTOCOL_ERROR: u32 = 0x1;

/// The request headers grpc-go writes for a konnectivity-client dial, in
/// its order; `authority: None` leaves the field out.
fn grpc_go_headers(authority: Option<&str>) -> Vec<(&str, &str)> {
    let mut h = vec![(":method", "POST"), (":scheme", "http")];
    h.push((":path", "/ProxyService/Proxy"));
    if let Some(a) = authority {
        h.push((":authority", a));
    }
    h.extend([
        ("content-type", "application/grpc"),
        ("user-agent", "grpc-go/1.27.0"),
        ("te", "trailers"),
    ]);
    h
}

fn framed(p: &Packet) -> Vec<u8> {
    let body = p.encode_to_vec();
    let mut out = BytesMut::with_capacity(5 + body.len());
    out.put_u8(0);
    out.put_u32(body.len() as u32);
    out.put_slice(&body);
    out.to_vec()
}

/// Reassembles gRPC messages from DATA events until `want` of them arrived
/// or the stream ended.
struct Reader {
    buf: BytesMut,
}

impl Reader {
    async fn packet(&mut self, h2: &mut RawH2, stream: u32) -> Result<Packet, String> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let msg = self.buf.split_to(len);
                    return Packet::decode(msg.freeze()).map_err(|e| e.to_string());
                }
            }
            match h2.next_event(stream).await.map_err(|e| e.to_string())? {
                Event::Headers { end_stream: false } => {}
                Event::Data { payload, .. } => self.buf.extend_from_slice(&payload),
                other => return Err(format!("stream ended before a packet: {other:?}")),
            }
        }
    }
}

/// One full konnectivity-client exchange with the given `:authority`:
/// DIAL_REQ → DIAL_RSP, DATA echoed, CLOSE_REQ → CLOSE_RSP, end of stream.
async fn dial_echo_close(uds: &Path, authority: Option<&str>, echo: SocketAddr) {
    let label = format!("{authority:?}");
    let mut h2 = RawH2::connect_uds(uds).await.unwrap();
    h2.send_headers(1, &grpc_go_headers(authority), false)
        .await
        .unwrap();
    h2.send_data(1, &framed(&dial_req(&echo.to_string(), 7)), false)
        .await
        .unwrap();
    let mut r = Reader {
        buf: BytesMut::new(),
    };
    let rsp = match r.packet(&mut h2, 1).await {
        Ok(Packet {
            payload: Some(Payload::DialResponse(d)),
            ..
        }) => d,
        other => panic!("authority {label}: expected DIAL_RSP, got {other:?}"),
    };
    assert_eq!(rsp.error, "", "authority {label}");
    assert_eq!(rsp.random, 7);
    let c = rsp.connect_id;
    assert_ne!(c, 0);

    h2.send_data(1, &framed(&data(c, Bytes::from_static(b"ping"))), false)
        .await
        .unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 4 {
        match r.packet(&mut h2, 1).await {
            Ok(Packet {
                payload: Some(Payload::Data(d)),
                ..
            }) => {
                assert_eq!(d.connect_id, c);
                echoed.extend_from_slice(&d.data);
            }
            other => panic!("authority {label}: expected DATA, got {other:?}"),
        }
    }
    assert_eq!(echoed, b"ping");

    h2.send_data(1, &framed(&close_req(c)), false)
        .await
        .unwrap();
    match r.packet(&mut h2, 1).await {
        Ok(Packet {
            payload: Some(Payload::CloseResponse(cr)),
            ..
        }) => assert_eq!(cr.connect_id, c),
        other => panic!("authority {label}: expected CLOSE_RSP, got {other:?}"),
    }
    // The trailers end the stream; nothing is reset.
    match h2.next_event(1).await.unwrap() {
        Event::Headers { end_stream: true } => {}
        other => panic!("authority {label}: expected trailers, got {other:?}"),
    }
}

fn cluster(echo: SocketAddr) -> Cluster {
    Cluster::start(ClusterOptions::allowing(&[echo.to_string()], &[]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authority_real_grpc_clients_send_is_served() {
    let echo = echo_server().await.unwrap();
    let c = cluster(echo);
    let uds = c.server.uds.clone().unwrap();
    let path = uds.display().to_string();
    let encoded = path.replace('/', "%2F");
    let kube_default = "/etc/kubernetes/konnectivity-server/konnectivity-server.socket";
    for authority in [
        Some(path.as_str()),
        Some(kube_default),
        Some(encoded.as_str()),
        Some(""),
        None,
        Some("localhost"),
    ] {
        dial_echo_close(&uds, authority, echo).await;
    }
    let logs = c.server.proc.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_http2_stays_strict() {
    let echo = echo_server().await.unwrap();
    let c = cluster(echo);
    let uds = c.server.uds.clone().unwrap();
    // CONNECT needs a real authority; a socket path is still malformed.
    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        (
            "CONNECT with a path as authority",
            vec![(":method", "CONNECT"), (":authority", "/run/x.sock")],
        ),
        (
            "missing :scheme",
            vec![
                (":method", "POST"),
                (":path", "/ProxyService/Proxy"),
                ("content-type", "application/grpc"),
            ],
        ),
        (
            "connection-specific header",
            vec![
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/ProxyService/Proxy"),
                ("connection", "keep-alive"),
            ],
        ),
    ];
    for (what, headers) in cases {
        let mut h2 = RawH2::connect_uds(&uds).await.unwrap();
        h2.send_headers(1, &headers, false).await.unwrap();
        match h2.next_event(1).await.unwrap() {
            Event::Reset(code) | Event::GoAway(code) => {
                assert_eq!(code, PROTOCOL_ERROR, "{what}")
            }
            other => panic!("{what}: expected a PROTOCOL_ERROR reset, got {other:?}"),
        }
    }
}
