//! When the edge side of a stream goes away (issue 12, findings 9 and 10):
//! what a Unix-socket client observes, and revocation reaching a connection
//! that is still draining after a transport switch.

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use integration::netns::{self, forward_drop, Blocked, NatTopology};
use integration::services::line_server_on;
use integration::{
    connect_uds, AgentOptions, AgentProc, Cluster, ClusterOptions, ServerOptions, ServerProc,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An edge service that sends `hello`, then after 200 ms either resets the
/// connection (`reset`) or half-closes it and keeps reading.
async fn edge_service(reset: bool) -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"hello").await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                if reset {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    drop(s);
                } else {
                    let _ = s.shutdown().await;
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                }
            });
        }
    });
    addr
}

/// A broken edge stream on `--uds`: the client reads what was sent, then EOF,
/// and its next write fails (EPIPE), where a clean half-close lets it write on.
/// (AF_UNIX has no RST; see docs/operations.md, "Failure behaviour".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_edge_stream_on_the_unix_socket_is_not_a_clean_end() {
    let broken = edge_service(true).await;
    let clean = edge_service(false).await;
    let s = Cluster::start(ClusterOptions::allowing(
        &[broken.to_string(), clean.to_string()],
        &[],
    ));
    for (target, is_broken) in [(broken, true), (clean, false)] {
        let mut r = connect_uds(&s.uds(), &target.to_string()).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), r.stream.read_to_end(&mut got))
            .await
            .expect("stream ends");
        assert_eq!(&got, b"hello", "{read:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let wrote = r.stream.write_all(b"after the end").await;
        if is_broken {
            let e = wrote.expect_err("write after a broken edge stream must fail");
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
        } else {
            wrote.expect("a half-closed stream still takes writes");
        }
    }
}

/// A stream opened over WebSocket keeps its (replaced) connection alive after
/// the agent moved back to QUIC; revoking the node must close that
/// connection too, not only the registered one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_a_connection_left_draining_after_a_transport_switch() {
    if netns::skip_unless_available("revocation_closes_a_draining_connection") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let topo = NatTopology::create().expect("NAT topology");
    let edge_ip = IpAddr::V4(topo.edge_ip);
    let edge = topo.edge_runtime().expect("edge runtime");
    let lines = 100;
    let long = edge
        .spawn(async move {
            line_server_on(&format!("{edge_ip}:0"), lines, Duration::from_millis(100)).await
        })
        .await
        .unwrap()
        .expect("edge service");
    let pki = topo.cloud_pki(tmp.path()).expect("certificates");
    let revoked = tmp.path().join("revoked");
    let server = ServerProc::start(
        &pki,
        ServerOptions {
            uds: true,
            agent_host: Some(topo.cloud_ip.to_string()),
            args: vec![format!("--revocation-file={}", revoked.display())],
            ..Default::default()
        },
    )
    .expect("server");
    forward_drop(&topo.nat_ns, Blocked::Udp, true);
    let agent = AgentProc::start(
        &pki,
        server.agent_addr,
        "edge-1",
        &[edge_ip],
        AgentOptions {
            allow: vec![long.to_string()],
            netns: Some(topo.edge_ns.clone()),
            args: vec!["--quic-probe-interval=1s".into()],
            ..Default::default()
        },
    )
    .expect("agent");
    let on = |t: &str| {
        server
            .agents()
            .ok()
            .is_some_and(|a| a.as_array().map(|v| v.len()) == Some(1) && a[0]["transport"] == t)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !on("websocket") {
        assert!(Instant::now() < deadline, "{}", server.proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = connect_uds(server.uds.as_ref().unwrap(), &long.to_string())
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let reader = tokio::spawn(async move {
        let mut stream = r.stream;
        let mut text = Vec::new();
        let _ = stream.read_to_end(&mut text).await;
        (
            String::from_utf8_lossy(&text).lines().count(),
            Instant::now(),
        )
    });
    forward_drop(&topo.nat_ns, Blocked::Udp, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !on("quic") {
        assert!(Instant::now() < deadline, "{}", server.proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server
        .proc
        .logs()
        .contains("draining the previous connection"));
    let out = Command::new(integration::process::bin("tunnel-server"))
        .args(["certs", "revoke", "--node", "edge-1"])
        .arg("--revocation-file")
        .arg(&revoked)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = Instant::now();
    // The replaced WebSocket connection, still carrying the stream, is closed
    // by the revocation (before: it lived until the stream finished, ~10 s).
    while !agent.proc.logs().contains("previous connection closed") {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(3),
            "draining connection outlived the revocation:\n{}",
            server.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "draining connection closed {:?} after revocation",
        revoked_at.elapsed()
    );
    // The stream riding on it ends with it (before: a graceful yamux close
    // left the server's side of the stream waiting until the line server
    // finished, ~10 s after the revocation).
    let (lines_read, ended_at) = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the stream on the revoked connection is still open")
        .unwrap();
    let ended_after = ended_at.saturating_duration_since(revoked_at);
    assert!(
        ended_after < Duration::from_secs(3) && lines_read < lines,
        "stream ended {ended_after:?} after revocation with {lines_read} of {lines} lines"
    );
    drop(edge);
}
