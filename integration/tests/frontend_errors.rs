//! Every row of the spec's front-end error table, through the real binaries:
//! status code and a body naming the cause.

use std::time::{Duration, Instant};

use integration::client::{connect_tls, proxy_tls, send_connect};
use integration::services::{echo_server, hanging_server};
use integration::{connect_uds, Cluster, ClusterOptions};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A cluster with both front ends (UDS and mTLS TCP).
fn setup(extra_server_args: &[&str], allow: &[String]) -> Cluster {
    let mut opts = ClusterOptions::allowing(allow, &[]).server_args(extra_server_args);
    opts.server.proxy = true;
    Cluster::start(opts)
}

/// Sends raw bytes to the UDS front end and returns the whole response.
async fn raw_uds(s: &Cluster, request: &[u8]) -> String {
    let mut sock = tokio::net::UnixStream::connect(s.server.uds.as_ref().unwrap())
        .await
        .unwrap();
    sock.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut out))
        .await
        .expect("server answers and closes")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_405_and_431() {
    let s = setup(&[], &[]);
    let r = raw_uds(&s, b"CONNECT\r\n\r\n").await;
    assert_eq!(status_of(&r), 400, "{r}");
    let r = raw_uds(&s, b"\x00\x01garbage\r\n\r\n").await;
    assert_eq!(status_of(&r), 400, "{r}");
    let r = raw_uds(&s, b"CONNECT 10.0.0.5 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(r.contains("missing port"), "{r}");
    let r = raw_uds(&s, b"CONNECT 10.0.0.5:99999 HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(r.contains("invalid port"), "{r}");
    let r = raw_uds(
        &s,
        b"GET http://127.0.0.1:10250/metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&r), 405, "{r}");
    assert!(r.contains("method GET is not allowed"), "{r}");
    let mut big = b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n".to_vec();
    while big.len() < 20_000 {
        big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let r = raw_uds(&s, &big).await;
    assert_eq!(status_of(&r), 431, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_not_allowed_gets_403() {
    let echo = echo_server().await.unwrap();
    let s = setup(
        &["--proxy-client-name=kube-apiserver-proxy-client"],
        &[echo.to_string()],
    );
    let ca = s.pki.path("ca.crt");
    let addr = s.server.proxy_addr.unwrap();

    // No client certificate at all.
    let anon = proxy_tls(&ca, None).unwrap();
    let r = connect_tls(&anon, addr, &echo.to_string()).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("client certificate"), "{}", r.body);

    // A valid certificate from the right CA but a CN that is not allowed.
    let client_ca = certs::CertificateAuthority::from_files(
        &s.pki.path(certs::bundle::PROXY_CLIENT_CA_CERT_FILE),
        &s.pki.path(certs::bundle::PROXY_CLIENT_CA_KEY_FILE),
    )
    .unwrap();
    let other = client_ca
        .issue_client("someone-else", Duration::from_secs(3600))
        .unwrap();
    let (other_cert, other_key) = (s.pki.path("other.crt"), s.pki.path("other.key"));
    std::fs::write(&other_cert, &other.cert_pem).unwrap();
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let wrong = proxy_tls(&ca, Some((&other_cert, &other_key))).unwrap();
    let r = connect_tls(&wrong, addr, &echo.to_string()).await.unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("someone-else"), "{}", r.body);

    // The proxy client certificate works, over TLS, end to end.
    let good = proxy_tls(
        &ca,
        Some((
            &s.pki.path("proxy-client.crt"),
            &s.pki.path("proxy-client.key"),
        )),
    )
    .unwrap();
    let mut r = connect_tls(&good, addr, &echo.to_string()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.stream.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    r.stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_refusal_gets_403_and_failed_dial_gets_502() {
    let s = setup(&[], &["127.0.0.1:1-1023".to_string()]);
    let uds = s.server.uds.clone().unwrap();
    let r = connect_uds(&uds, "127.0.0.1:10250").await.unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("--allow"), "{}", r.body);
    // Port 1 on loopback: nothing listens, the agent's dial is refused.
    let r = connect_uds(&uds, "127.0.0.1:1").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.body.contains("refused"), "{}", r.body);
    let m = s.server.metrics().unwrap();
    assert!(
        m.contains(
            "tunnel_server_frontend_requests_total{code=\"502\",protocol=\"http-connect\"} 1"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_gets_503_and_never_a_random_agent() {
    let echo = echo_server().await.unwrap();
    let s = setup(&[], &[echo.to_string()]);
    let uds = s.server.uds.clone().unwrap();
    for target in [
        "10.9.9.9:10250",
        "edge-2:10250",
        "[fd00::1]:10250",
        "127.0.0.2:10250",
    ] {
        let r = connect_uds(&uds, target).await.unwrap();
        assert_eq!(r.status, 503, "{target}: {}", r.body);
        assert!(r.body.contains("no agent is registered"), "{}", r.body);
    }
    // The node name routes to its agent too (which then applies its allowlist).
    let r = connect_uds(&uds, &format!("edge-1:{}", echo.port()))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("agent for node edge-1 refused"),
        "{}",
        r.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_and_pending_dial_limits_get_503() {
    let echo = echo_server().await.unwrap();
    let (hang, _guard) = hanging_server().await.unwrap();
    let s = setup(
        &[
            "--max-streams=1",
            "--max-pending-dials=1",
            "--dial-timeout=20s",
        ],
        &[echo.to_string(), hang.to_string()],
    );
    let uds = s.server.uds.clone().unwrap();
    // A pending dial occupies both the only stream slot and the only pending slot.
    let uds2 = uds.clone();
    let pending = tokio::spawn(async move { connect_uds(&uds2, &hang.to_string()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = connect_uds(&uds, &echo.to_string()).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("limit"), "{}", r.body);
    pending.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_dial_limit_alone_gets_503() {
    let (hang, _guard) = hanging_server().await.unwrap();
    let s = setup(
        &["--max-pending-dials=1", "--dial-timeout=20s"],
        &[hang.to_string()],
    );
    let uds = s.server.uds.clone().unwrap();
    let uds2 = uds.clone();
    let pending = tokio::spawn(async move { connect_uds(&uds2, &hang.to_string()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = connect_uds(&uds, &hang.to_string()).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("pending dials"), "{}", r.body);
    pending.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_agent_gets_504_after_dial_timeout() {
    let echo = echo_server().await.unwrap();
    let s = setup(&["--dial-timeout=1s"], &[echo.to_string()]);
    let uds = s.server.uds.clone().unwrap();
    // A stopped (not dead) agent keeps its QUIC connection but never answers.
    let agent = s.agent.as_ref().unwrap();
    agent.proc.signal(Signal::SIGSTOP);
    let started = Instant::now();
    let r = connect_uds(&uds, &echo.to_string()).await.unwrap();
    let took = started.elapsed();
    agent.proc.signal(Signal::SIGCONT);
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.body.contains("within 1s"), "{}", r.body);
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_vanishing_during_a_dial_gets_504_at_once_then_503() {
    let (hang, _guard) = hanging_server().await.unwrap();
    let mut s = setup(&["--dial-timeout=30s"], &[hang.to_string()]);
    let uds = s.server.uds.clone().unwrap();
    let uds2 = uds.clone();
    let pending = tokio::spawn(async move {
        let started = Instant::now();
        let r = connect_uds(&uds2, &hang.to_string()).await.unwrap();
        (r.status, r.body, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = Instant::now();
    s.agent.take().unwrap().proc.stop(Duration::from_secs(5));
    let (status, body, _) = pending.await.unwrap();
    let pending_failed_after = stopped.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("disconnected"), "{body}");
    assert!(
        pending_failed_after < Duration::from_secs(2),
        "pending dial failed {pending_failed_after:?} after the agent stopped"
    );
    let started = Instant::now();
    let r = connect_uds(&uds, &hang.to_string()).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_head_gets_408() {
    let s = setup(&["--header-timeout=1s"], &[]);
    let mut sock = tokio::net::UnixStream::connect(s.server.uds.as_ref().unwrap())
        .await
        .unwrap();
    sock.write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), sock.read_to_end(&mut out))
        .await
        .expect("server closes slow clients")
        .unwrap();
    let r = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&r), 408, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reply_is_sent_only_after_the_dial_succeeded() {
    let (hang, _guard) = hanging_server().await.unwrap();
    let s = setup(&["--dial-timeout=2s"], &[hang.to_string()]);
    let sock = tokio::net::UnixStream::connect(s.server.uds.as_ref().unwrap())
        .await
        .unwrap();
    // Until the dial resolves, not a single byte may arrive.
    let started = Instant::now();
    let r = send_connect(sock, &hang.to_string()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1900));
    assert_eq!(r.status, 504, "{}", r.body);
}
