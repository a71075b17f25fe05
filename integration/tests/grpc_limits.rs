//! Limits of the gRPC front end, through the real binaries: messages larger
//! than the HTTP/2 window flow, calls that never dial or stop half-way are
//! ended with a status that says why, and what calls buffer is bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use integration::grpc::{data, Call, Payload};
use integration::process::metric_value;
use integration::services::{echo_server, pattern, sha256_hex};
use integration::{Cluster, ClusterOptions};
use prost::Message as _;

/// The server's message limit and its per-call receive window.
const MAX_MESSAGE: usize = 4 * 1024 * 1024;
const STREAM_WINDOW: usize = 1024 * 1024;

fn cluster(args: &[&str], echo: SocketAddr) -> Cluster {
    Cluster::start(ClusterOptions::allowing(&[echo.to_string()], &[]).server_args(args))
}

fn uds(c: &Cluster) -> PathBuf {
    c.server.uds.clone().unwrap()
}

fn server_metric(c: &Cluster, sample: &str) -> f64 {
    metric_value(&c.server.metrics().unwrap(), sample).unwrap_or(0.0)
}

/// A gRPC frame prefix announcing a message of `len` bytes.
fn prefix(len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(5);
    b.put_u8(0);
    b.put_u32(len as u32);
    b.freeze()
}

/// A call dialed to `echo`; returns it with its connectID.
async fn dialed(uds: &Path, echo: SocketAddr, random: i64) -> (Call, i64) {
    let mut call = Call::uds(uds).await.unwrap();
    let rsp = call.dial(&echo.to_string(), random).await.unwrap();
    assert_eq!(rsp.error, "");
    (call, rsp.connect_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_the_full_size_limit_flows_through_a_smaller_window() {
    let echo = echo_server().await.unwrap();
    let c = cluster(&[], echo);
    let (call, id) = dialed(&uds(&c), echo, 1).await;
    // The largest DATA whose encoded Packet still fits in 4 MiB.
    let overhead = data(id, Bytes::new()).encoded_len() + 8;
    let payload = Bytes::from(pattern(MAX_MESSAGE - overhead, 3));
    let packet = data(id, payload.clone());
    assert!(packet.encoded_len() <= MAX_MESSAGE);
    assert!(packet.encoded_len() > 3 * STREAM_WINDOW);
    let want = sha256_hex(&payload);
    let Call {
        mut tx,
        mut rx,
        conn: _conn,
    } = call;
    let sender = tokio::spawn(async move {
        tx.send(&packet).await.unwrap();
        tx
    });
    let mut got = Vec::with_capacity(payload.len());
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while got.len() < payload.len() {
            match rx.recv().await.unwrap().expect("echoed DATA").payload {
                Some(Payload::Data(d)) => got.extend_from_slice(&d.data),
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "a {}-byte message stalled: {} bytes echoed",
        payload.len(),
        got.len()
    );
    assert_eq!(sha256_hex(&got), want);
    sender.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_dial_request_are_ended_after_the_header_timeout() {
    let echo = echo_server().await.unwrap();
    let c = cluster(&["--header-timeout=1s"], echo);
    let started = Instant::now();
    let mut calls = Vec::new();
    for _ in 0..100 {
        calls.push(Call::uds(&uds(&c)).await.unwrap());
    }
    for mut call in calls {
        let ended = tokio::time::timeout(Duration::from_secs(5), call.rx.recv()).await;
        assert!(
            matches!(ended, Ok(Ok(None))),
            "call still open or failed: {ended:?}"
        );
        let st = call.rx.status.clone().expect("a grpc-status");
        assert_eq!(st.code, 4, "{st:?}");
        assert!(
            st.message.contains("DIAL_REQ") && st.message.contains("--header-timeout"),
            "{st:?}"
        );
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "ended after {took:?}");
    assert_eq!(
        server_metric(
            &c,
            "tunnel_server_frontend_requests_total{code=\"4\",protocol=\"grpc\"}"
        ),
        100.0
    );
}

/// Sends the prefix of a `MAX_MESSAGE` message and `sent` bytes of it.
async fn half_sent(uds: &Path, echo: SocketAddr, random: i64, sent: usize) -> Call {
    let (mut call, _) = dialed(uds, echo, random).await;
    call.tx.send_raw(prefix(MAX_MESSAGE)).await.unwrap();
    call.tx
        .send_raw(Bytes::from(vec![0x22u8; sent]))
        .await
        .unwrap();
    call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_message_ends_its_call_and_frees_its_buffer() {
    let echo = echo_server().await.unwrap();
    let c = cluster(&["--header-timeout=2s"], echo);
    let mut calls = Vec::new();
    for i in 0..20 {
        calls.push(half_sent(&uds(&c), echo, i, STREAM_WINDOW).await);
    }
    // Everything sent is held by the decoders, and accounted.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut held = 0.0;
    while Instant::now() < deadline {
        held = server_metric(&c, "tunnel_server_grpc_buffered_bytes");
        if held >= 20.0 * STREAM_WINDOW as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(held >= 20.0 * STREAM_WINDOW as f64, "held {held}");
    for mut call in calls {
        let ended = tokio::time::timeout(Duration::from_secs(6), call.rx.recv()).await;
        assert!(matches!(ended, Ok(Ok(None))), "{ended:?}");
        let st = call.rx.status.clone().expect("a grpc-status");
        assert_eq!(st.code, 4, "{st:?}");
        assert!(st.message.contains("stalled"), "{st:?}");
    }
    assert_eq!(server_metric(&c, "tunnel_server_grpc_buffered_bytes"), 0.0);
    assert_eq!(
        server_metric(&c, "tunnel_server_streams_active{frontend=\"grpc\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_messages_beyond_the_budget_are_refused_at_once() {
    // 80 calls each holding 1 MiB of a 4 MiB message would be 80 MiB; the
    // process-wide budget is 64 MiB.
    let echo = echo_server().await.unwrap();
    let c = cluster(&["--header-timeout=20s"], echo);
    let uds = uds(&c);
    let mut tasks = Vec::new();
    for i in 0..80 {
        let uds = uds.clone();
        tasks.push(tokio::spawn(async move {
            let (mut call, _) = dialed(&uds, echo, i).await;
            let sent = async {
                call.tx.send_raw(prefix(MAX_MESSAGE)).await?;
                call.tx
                    .send_raw(Bytes::from(vec![0x22u8; STREAM_WINDOW]))
                    .await
            }
            .await;
            (call, sent.is_ok())
        }));
    }
    let started = Instant::now();
    let mut calls = Vec::new();
    for t in tasks {
        calls.push(t.await.unwrap().0);
    }
    // Refused calls have their status already; held ones do not end before
    // the 20 s stall timeout. Look at all of them at once.
    let outcomes = futures::future::join_all(calls.into_iter().map(|mut call| async move {
        let r = tokio::time::timeout(Duration::from_secs(2), call.rx.recv()).await;
        let ended = match r {
            Ok(Ok(None)) => Some(call.rx.status.clone().expect("a grpc-status")),
            Err(_) => None,
            Ok(other) => panic!("unexpected {other:?}"),
        };
        (call, ended)
    }))
    .await;
    let mut exhausted = 0;
    let mut open = Vec::new();
    for (call, ended) in outcomes {
        match ended {
            Some(st) => {
                assert_eq!(st.code, 8, "{st:?}");
                assert!(st.message.contains("at most 67108864"), "{st:?}");
                exhausted += 1;
            }
            None => open.push(call),
        }
    }
    let held = server_metric(&c, "tunnel_server_grpc_buffered_bytes");
    eprintln!(
        "{exhausted} calls refused, {} held, {held} bytes buffered, {:?}",
        open.len(),
        started.elapsed()
    );
    assert!(held <= 64.0 * 1024.0 * 1024.0, "held {held}");
    assert!(exhausted >= 16, "only {exhausted} calls refused");
    // The budget comes back when the held calls go.
    drop(open);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server_metric(&c, "tunnel_server_grpc_buffered_bytes") > 0.0 {
        assert!(Instant::now() < deadline, "buffers not freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And a new call can use it.
    let (mut call, id) = dialed(&uds, echo, 99).await;
    call.tx
        .send(&data(id, Bytes::from_static(b"after")))
        .await
        .unwrap();
    match call.rx.recv().await.unwrap().unwrap().payload {
        Some(Payload::Data(d)) => assert_eq!(&d.data[..], b"after"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_calls_are_closed_after_the_stream_idle_timeout_and_busy_ones_are_not() {
    let echo = echo_server().await.unwrap();
    let c = cluster(&["--stream-idle-timeout=1s"], echo);
    let (mut idle, _) = dialed(&uds(&c), echo, 1).await;
    let (mut busy, busy_id) = dialed(&uds(&c), echo, 2).await;
    // A byte every 300 ms for 3 s on `busy`: three idle timeouts, never idle.
    for _ in 0..10 {
        busy.tx
            .send(&data(busy_id, Bytes::from_static(b"x")))
            .await
            .unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(2), busy.rx.recv()).await;
        assert!(
            matches!(&echoed, Ok(Ok(Some(p))) if matches!(p.payload, Some(Payload::Data(_)))),
            "busy call lost its echo: {echoed:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // `idle` moved nothing: CLOSE_RSP naming the flag, then the call ends.
    let close = tokio::time::timeout(Duration::from_secs(1), idle.rx.recv()).await;
    match close {
        Ok(Ok(Some(p))) => match p.payload {
            Some(Payload::CloseResponse(r)) => assert!(
                r.error.contains("--stream-idle-timeout"),
                "CLOSE_RSP error: {:?}",
                r.error
            ),
            other => panic!("expected CLOSE_RSP, got {other:?}"),
        },
        other => panic!("idle call not closed: {other:?}"),
    }
    assert_eq!(
        server_metric(
            &c,
            "tunnel_server_stream_idle_timeouts_total{frontend=\"grpc\"}"
        ),
        1.0
    );
}
