//! Several tunnel-server replicas (issue #14): agents connected to every
//! replica, the peer path for a node connected elsewhere, who may use the
//! peer path, and a replica killed mid-transfer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::http::get_via_proxy;
use integration::process::metric_value;
use integration::replicas::{connect_echo, grpc_echo, Replicas};
use integration::services::{echo_server_on, pattern, sha256_hex, source_server_on};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport::mux::{MuxRole, PeerInfo};
use transport::TunnelConnection;

const LIMIT: Duration = Duration::from_secs(30);

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_given_every_replica_are_reachable_through_each() {
    let r = Replicas::start(3, &[]);
    let echo1 = echo_server_on("127.0.0.11:0").await.unwrap();
    let echo2 = echo_server_on("127.0.0.12:0").await.unwrap();
    let _a1 = r.agent("edge-1", ip(11), &[0, 1, 2], &[echo1.to_string()]);
    let _a2 = r.agent("edge-2", ip(12), &[0, 1, 2], &[echo2.to_string()]);
    for i in 0..3 {
        r.wait_nodes(i, &["edge-1", "edge-2"], LIMIT).unwrap();
        let agents = r.servers[i].agents().unwrap();
        for row in agents.as_array().unwrap() {
            assert_eq!(row["server_id"], format!("r{i}"), "{agents}");
        }
        let m = r.servers[i].metrics().unwrap();
        assert_eq!(
            metric_value(
                &m,
                &format!("tunnel_server_replica_agents{{server_id=\"r{i}\"}}")
            ),
            Some(2.0),
            "{m}"
        );
    }
    let payload = pattern(64 * 1024, 3);
    for i in 0..3 {
        for echo in [echo1, echo2] {
            let (status, back) = connect_echo(r.uds(i), &echo.to_string(), &payload)
                .await
                .unwrap();
            assert_eq!(
                status,
                200,
                "r{i} -> {echo}: {}",
                String::from_utf8_lossy(&back)
            );
            assert_eq!(sha256_hex(&back), sha256_hex(&payload));
            let err = grpc_echo(r.uds(i), &echo.to_string(), &payload[..4096])
                .await
                .unwrap();
            assert_eq!(err, "", "gRPC r{i} -> {echo}");
        }
        // Every node is connected here: nothing went through a peer.
        let m = r.servers[i].metrics().unwrap();
        assert!(!m.contains("tunnel_server_peer_dials_total{"), "{m}");
    }
    // The agent keeps one connection per server address, labelled with it.
    let m = _a1.metrics().unwrap();
    for s in &r.servers {
        let sample = format!(
            "tunnel_agent_connected{{server=\"{}\",transport=\"quic\"}}",
            s.agent_addr
        );
        assert_eq!(metric_value(&m, &sample), Some(1.0), "{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_connected_elsewhere_is_reached_through_a_peer() {
    let r = Replicas::start(3, &[]);
    let echo = echo_server_on("127.0.0.21:0").await.unwrap();
    let http = integration::http::web_server_on("127.0.0.21:0")
        .await
        .unwrap();
    let _a = r.agent(
        "edge-1",
        ip(21),
        &[0, 1],
        &[echo.to_string(), http.to_string()],
    );
    r.wait_nodes(0, &["edge-1"], LIMIT).unwrap();
    r.wait_nodes(1, &["edge-1"], LIMIT).unwrap();
    assert!(r.nodes(2).is_empty(), "edge-1 was not given r2");

    let payload = pattern(256 * 1024, 9);
    let local = connect_echo(r.uds(0), &echo.to_string(), &payload)
        .await
        .unwrap();
    let started = Instant::now();
    let via_peer = connect_echo(r.uds(2), &echo.to_string(), &payload)
        .await
        .unwrap();
    eprintln!(
        "first CONNECT through the peer path: {:?}",
        started.elapsed()
    );
    assert_eq!(via_peer.0, 200, "{}", String::from_utf8_lossy(&via_peer.1));
    assert_eq!(sha256_hex(&via_peer.1), sha256_hex(&local.1));
    assert_eq!(sha256_hex(&via_peer.1), sha256_hex(&payload));
    // Over gRPC too.
    assert_eq!(
        grpc_echo(r.uds(2), &echo.to_string(), b"grpc")
            .await
            .unwrap(),
        ""
    );
    // A second CONNECT: the peer that had it is remembered (no lookup round).
    let started = Instant::now();
    assert_eq!(
        connect_echo(r.uds(2), &echo.to_string(), b"x")
            .await
            .unwrap()
            .0,
        200
    );
    eprintln!(
        "cached CONNECT through the peer path: {:?}",
        started.elapsed()
    );

    // Failures carry the status a local dial has.
    let refused = format!("{}:1", ip(21));
    let (local_status, local_body) = connect_echo(r.uds(0), &refused, b"").await.unwrap();
    let (peer_status, peer_body) = connect_echo(r.uds(2), &refused, b"").await.unwrap();
    assert_eq!(
        local_status,
        403,
        "{}",
        String::from_utf8_lossy(&local_body)
    );
    assert_eq!(
        peer_status,
        local_status,
        "{}",
        String::from_utf8_lossy(&peer_body)
    );
    let grpc_err = grpc_echo(r.uds(2), &refused, b"").await.unwrap();
    assert!(
        grpc_err.contains("refused") || grpc_err.contains("allow"),
        "{grpc_err}"
    );

    // The HTTP proxy, whose request goes with the stream's open locally and
    // is written right after the open on the peer path: the same answers.
    let proxy = |i: usize| {
        r.servers[i]
            .http_proxy_addr
            .expect("replicas run the HTTP proxy")
    };
    let ok = get_via_proxy(proxy(2), &http.to_string()).await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert!(ok.text().starts_with("GET / HTTP/1.1"), "{}", ok.text());
    let local = get_via_proxy(proxy(0), &refused).await.unwrap();
    let peer = get_via_proxy(proxy(2), &refused).await.unwrap();
    assert_eq!(local.status, 403, "{}", local.text());
    assert_eq!(peer.status, local.status, "{}", peer.text());

    // A node connected nowhere: 503 at once, naming it.
    let started = Instant::now();
    let (status, body) = connect_echo(r.uds(2), "edge-9:10250", b"").await.unwrap();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("edge-9"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    let m = r.servers[2].metrics().unwrap();
    let ok: f64 = (0..2)
        .filter_map(|i| {
            metric_value(
                &m,
                &format!(
                    "tunnel_server_peer_dials_total{{peer=\"{}\",result=\"ok\"}}",
                    r.servers[i].agent_addr
                ),
            )
        })
        .sum();
    // Two CONNECTs, one gRPC call, one HTTP proxy request.
    assert_eq!(ok, 4.0, "{m}");
}

/// A `--forward` on a replica the node is not connected to: the client's
/// first bytes, which a local dial sends with the stream's open, are written
/// right after the open on the peer path; they arrive first, exactly once,
/// and the rest follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_on_a_replica_without_the_node_goes_through_a_peer() {
    let echo = echo_server_on("127.0.0.22:0").await.unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", integration::process::free_port())
        .parse()
        .unwrap();
    let r = Replicas::start_each(2, |i| match i {
        1 => vec![format!("--forward={listen}=edge-2/{echo}")],
        _ => Vec::new(),
    });
    let _a = r.agent("edge-2", ip(22), &[0], &[echo.to_string()]);
    r.wait_nodes(0, &["edge-2"], LIMIT).unwrap();
    assert!(r.nodes(1).is_empty(), "edge-2 was not given r1");

    let mut c = tokio::net::TcpStream::connect(listen).await.unwrap();
    let rest = pattern(64 * 1024, 3);
    let echoed = tokio::time::timeout(LIMIT, async {
        c.write_all(b"first bytes").await?;
        let mut first = [0u8; 11];
        c.read_exact(&mut first).await?;
        c.write_all(&rest).await?;
        let mut back = vec![0u8; rest.len()];
        c.read_exact(&mut back).await?;
        anyhow::Ok((first, back))
    })
    .await
    .expect("echo through the forward within the limit")
    .unwrap();
    assert_eq!(&echoed.0, b"first bytes");
    assert_eq!(sha256_hex(&echoed.1), sha256_hex(&rest));
    let m = r.servers[1].metrics().unwrap();
    let via_peer = metric_value(
        &m,
        &format!(
            "tunnel_server_peer_dials_total{{peer=\"{}\",result=\"ok\"}}",
            r.servers[0].agent_addr
        ),
    );
    assert_eq!(via_peer, Some(1.0), "{m}");
}

/// A peer-path request, as a replica sends it, with `tls`; returns the answer.
async fn ask_peer(addr: SocketAddr, tls: rustls::ClientConfig) -> anyhow::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await?;
    let conn = TunnelConnection::Ws {
        mux: transport::mux::spawn(tls, MuxRole::Client, transport::mux::Frames::Peer),
        peer: PeerInfo {
            remote: addr,
            certificates: None,
        },
    };
    let (mut send, recv) = conn.open_stream().await?;
    let body = br#"{"op":"lookup","node":"edge-1","target":"edge-1:10250","frontend":"test"}"#;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    send.write_all(&frame).await?;
    let mut io = transport::tunnel_io::TunnelIo::new(send, recv);
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(3), io.read_exact(&mut len)).await??;
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    io.read_exact(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_peer_certificates_may_use_the_peer_path() {
    let r = Replicas::start(1, &[]);
    let echo = echo_server_on("127.0.0.31:0").await.unwrap();
    let _a = r.agent("edge-1", ip(31), &[0], &[echo.to_string()]);
    r.wait_nodes(0, &["edge-1"], LIMIT).unwrap();
    let addr = r.servers[0].agent_addr;
    let alpn = b"edgetunnel-peer/1";
    let p = &r.pki;
    let peer_tls = |cert: &str, key: &str| {
        certs::agent_client_config(
            certs::load_root_store(&p.path("ca.crt")).unwrap(),
            certs::load_cert_chain(&p.path(cert)).unwrap(),
            certs::load_private_key(&p.path(key)).unwrap(),
            vec![alpn.to_vec()],
        )
        .unwrap()
    };
    let answer = ask_peer(addr, peer_tls("peer.crt", "peer.key"))
        .await
        .unwrap();
    assert!(answer.contains("\"status\":200"), "{answer}");
    assert!(answer.contains("\"server_id\":\"r0\""), "{answer}");

    // A valid agent certificate of the same CA: closed, no answer.
    let agent_tls = p.agent_client_tls("edge-2", &[], alpn).unwrap();
    let refused = ask_peer(addr, agent_tls).await;
    assert!(
        refused.is_err(),
        "an agent certificate got an answer: {refused:?}"
    );
    let m = r.servers[0].metrics().unwrap();
    assert_eq!(
        metric_value(
            &m,
            "tunnel_server_frontend_refusals_total{reason=\"not_peer_certificate\"}"
        ),
        Some(1.0),
        "{m}"
    );
}

/// Streams `size` bytes from `source` through `uds`; returns the checksum.
async fn fetch(uds: std::path::PathBuf, source: SocketAddr, size: usize) -> anyhow::Result<String> {
    let reply = integration::connect_uds(&uds, &source.to_string()).await?;
    anyhow::ensure!(
        reply.status == 200,
        "status {}: {}",
        reply.status,
        reply.body
    );
    let mut s = reply.stream;
    let mut got = Vec::with_capacity(size);
    tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got)).await??;
    anyhow::ensure!(got.len() == size, "{} of {size} bytes", got.len());
    Ok(sha256_hex(&got))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_replica_leaves_the_others_intact() {
    let mut r = Replicas::start(3, &[]);
    let size = 24 * 1024 * 1024;
    let data = pattern(size, 5);
    let want = sha256_hex(&data);
    let src1 = source_server_on("127.0.0.41:0", Arc::new(data.clone()))
        .await
        .unwrap();
    let src2 = source_server_on("127.0.0.42:0", Arc::new(data))
        .await
        .unwrap();
    let _a1 = r.agent("edge-1", ip(41), &[0, 1, 2], &[src1.to_string()]);
    let _a2 = r.agent("edge-2", ip(42), &[0, 1, 2], &[src2.to_string()]);
    for i in 0..3 {
        r.wait_nodes(i, &["edge-1", "edge-2"], LIMIT).unwrap();
    }
    // Transfers on r1 and r2 while r0 dies.
    let mut transfers = Vec::new();
    for i in [1, 2] {
        for src in [src1, src2] {
            transfers.push(tokio::spawn(fetch(r.uds(i).to_path_buf(), src, size)));
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    r.servers[0].proc.kill();
    for t in transfers {
        assert_eq!(
            t.await.unwrap().unwrap(),
            want,
            "transfer through a survivor"
        );
    }
    // New requests through the survivors: all succeed.
    let mut ok = 0;
    for n in 0..40 {
        let i = 1 + n % 2;
        let src = if n % 4 < 2 { src1 } else { src2 };
        let reply = integration::connect_uds(r.uds(i), &src.to_string())
            .await
            .unwrap();
        assert_eq!(reply.status, 200, "request {n} via r{i}: {}", reply.body);
        ok += 1;
    }
    assert_eq!(ok, 40);
    // Back: both agents reconnect to it (their backoff redials it).
    let started = Instant::now();
    r.servers[0].restart().unwrap();
    r.wait_nodes(0, &["edge-1", "edge-2"], LIMIT).unwrap();
    eprintln!(
        "agents back on the restarted replica after {:?}",
        started.elapsed()
    );
    assert_eq!(
        fetch(r.uds(0).to_path_buf(), src1, size).await.unwrap(),
        want
    );
}
