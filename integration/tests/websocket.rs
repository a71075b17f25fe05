//! The WebSocket fallback: automatic choice when UDP is blocked, recovery
//! to QUIC, agents behind an HTTP proxy, and hostile input on the
//! WebSocket listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::netns::{self, forward_drop, Blocked, NatTopology};
use integration::scenarios;
use integration::services::{
    echo_server, echo_server_on, line_server_on, pattern, source_server_on,
};
use integration::{
    connect_uds, AgentOptions, AgentProc, Cluster, ClusterOptions, Pki, ServerOptions, ServerProc,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Polls `/agents` until the single agent uses `transport`; returns how long it took.
async fn wait_transport(server: &ServerProc, transport: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(a) = server.agents() {
            if a.as_array().map(|v| v.len()) == Some(1) && a[0]["transport"] == transport {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < limit,
            "agent not on {transport} within {limit:?}: {:?}\n{}",
            server.agents().ok(),
            server.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_uses_websocket_when_udp_is_blocked_and_returns_to_quic() {
    if netns::skip_unless_available("auto_uses_websocket_when_udp_is_blocked") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let topo = NatTopology::create().expect("NAT topology");
    let edge_ip = IpAddr::V4(topo.edge_ip);
    let edge = topo.edge_runtime().expect("edge runtime");
    let data = Arc::new(pattern(10 * 1024 * 1024, 5));
    let (source, echo, long) = {
        let data = data.clone();
        edge.spawn(async move {
            Ok::<_, std::io::Error>((
                source_server_on(&format!("{edge_ip}:0"), data).await?,
                echo_server_on(&format!("{edge_ip}:0")).await?,
                line_server_on(&format!("{edge_ip}:0"), 80, Duration::from_millis(50)).await?,
            ))
        })
        .await
        .unwrap()
        .expect("edge services")
    };
    let pki = topo.cloud_pki(tmp.path()).expect("certificates");
    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            uds: true,
            agent_host: Some(topo.cloud_ip.to_string()),
            ..Default::default()
        },
    )
    .expect("server");
    forward_drop(&topo.nat_ns, Blocked::Udp, true);
    let probe = Duration::from_secs(2);
    let started = Instant::now();
    let _agent = AgentProc::start(
        &pki,
        server.agent_addr,
        "edge-1",
        &[edge_ip],
        AgentOptions {
            allow: [source, echo, long]
                .iter()
                .map(ToString::to_string)
                .collect(),
            netns: Some(topo.edge_ns.clone()),
            args: vec![format!("--quic-probe-interval={}s", probe.as_secs())],
            ..Default::default()
        },
    )
    .expect("agent");
    server
        .wait_agents(1, Duration::from_secs(10))
        .expect("registered within 10 s");
    let on_ws = started.elapsed();
    wait_transport(&server, "websocket", Duration::from_secs(1)).await;
    eprintln!("UDP blocked: registered over WebSocket {on_ws:?} after start");

    let uds = server.uds.clone().unwrap();
    scenarios::logs_bulk(&uds, source, &data).await;
    scenarios::exec_half_close(&uds, echo).await;
    let took = scenarios::port_forward(&uds, echo, 200, 1024 * 1024).await;
    eprintln!("over WebSocket through NAT: 200 x 1 MB echoed in {took:?}");

    // A long stream opened before the switch must complete intact on WebSocket.
    let before = connect_uds(&uds, &long.to_string()).await.unwrap();
    assert_eq!(before.status, 200, "{}", before.body);
    let reader = tokio::spawn(async move {
        let mut s = String::new();
        let mut stream = before.stream;
        stream.read_to_string(&mut s).await.map(|_| s)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    forward_drop(&topo.nat_ns, Blocked::Udp, false);
    let unblocked = Instant::now();
    let took = wait_transport(&server, "quic", probe * 2 + Duration::from_secs(3)).await;
    eprintln!("UDP unblocked: on QUIC {took:?} later (probe interval {probe:?})");
    assert!(
        unblocked.elapsed() <= probe * 2 + probe / 2 + Duration::from_secs(1),
        "{took:?}"
    );
    let text = reader.await.unwrap().expect("long stream completes");
    let want: String = (0..80).map(|i| format!("line {i}\n")).collect();
    assert_eq!(
        text, want,
        "stream opened before the switch was cut or corrupted"
    );
    // New streams now go over QUIC.
    scenarios::exec_half_close(&uds, echo).await;
    assert!(server
        .proc
        .logs()
        .contains("draining the previous connection"));
    drop(edge);
}

/// A minimal HTTP CONNECT proxy that counts the tunnels it opened.
async fn connect_proxy() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut b).await.unwrap_or(0) == 0 || head.len() > 8192 {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let target = text
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reaches_the_server_through_an_http_connect_proxy() {
    let echo = echo_server().await.unwrap();
    let (proxy, tunnels) = connect_proxy().await;
    let c = Cluster::start(ClusterOptions::allowing(
        &[echo.to_string()],
        &["--transport=websocket", &format!("--proxy=http://{proxy}")],
    ));
    assert!(
        tunnels.load(Ordering::SeqCst) >= 1,
        "the proxy carried no tunnel"
    );
    scenarios::exec_half_close(&c.uds(), echo).await;
}

/// TLS client config for the WebSocket listener, with or without the agent's certificate.
fn ws_tls(pki: &Pki, with_cert: bool) -> tokio_rustls::TlsConnector {
    let cfg = if with_cert {
        pki.agent_client_tls("edge-x", &["127.0.0.1".parse().unwrap()], b"http/1.1")
            .unwrap()
    } else {
        let roots = certs::load_root_store(&pki.path("ca.crt")).unwrap();
        rustls::ClientConfig::builder_with_provider(certs::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth()
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

async fn tls_to(
    addr: SocketAddr,
    c: &tokio_rustls::TlsConnector,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    c.connect(name, tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_on_the_websocket_listener_is_refused_cleanly() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    let echo = echo_server().await.unwrap();
    let c = Cluster::start(ClusterOptions::allowing(&[echo.to_string()], &[]));
    let (server, pki) = (&c.server, &c.pki);
    let addr = server.agent_addr;
    let read_all = |mut s: TcpStream| async move {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };

    // Plain HTTP on the TLS port.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /v1/tunnel HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let r = read_all(tcp).await;
    assert!(
        r.starts_with("HTTP/1.1 400") && r.contains("speaks TLS"),
        "{r}"
    );

    // TLS without a client certificate: the handshake is refused.
    let anon = ws_tls(pki, false);
    let refused = match tls_to(addr, &anon).await {
        Err(_) => true,
        Ok(mut s) => {
            // TLS 1.3 reports the refusal on the first read.
            let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
            let mut buf = [0u8; 64];
            !matches!(s.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate got through");

    // Valid TLS, wrong path.
    let agent_tls = ws_tls(pki, true);
    let tls = tls_to(addr, &agent_tls).await.unwrap();
    let err =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/other", addr.port()), tls)
            .await
            .map(|_| ())
            .expect_err("wrong path refused");
    assert!(err.to_string().contains("404"), "{err}");

    // Valid upgrade, then garbage instead of frames / an oversized message / text.
    for attack in 0..3 {
        let tls = tls_to(addr, &agent_tls).await.unwrap();
        let url = format!("wss://localhost:{}/v1/tunnel", addr.port());
        let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
        match attack {
            0 => {
                let inner = ws.get_mut();
                let _ = inner.write_all(&[0xff; 64]).await;
                let _ = inner.flush().await;
            }
            1 => {
                let _ = ws
                    .send(Message::Binary(vec![0u8; 2 * 1024 * 1024].into()))
                    .await;
            }
            _ => {
                let _ = ws.send(Message::Text("hello".into())).await;
            }
        }
        let mut closed = false;
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(1), futures::StreamExt::next(&mut ws))
                .await
            {
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        assert!(closed, "attack {attack}: connection not closed");
    }

    // Still serving, no panic.
    let mut r = connect_uds(server.uds.as_ref().unwrap(), &echo.to_string())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.stream.write_all(b"ok").await.unwrap();
    let mut buf = [0u8; 2];
    r.stream.read_exact(&mut buf).await.unwrap();
    let logs = server.proc.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    assert_eq!(
        server.agents().unwrap().as_array().map(|a| a.len()),
        Some(1)
    );
}
