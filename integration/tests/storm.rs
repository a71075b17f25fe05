//! Storm control on the agent port (issue 13, item 3): with every
//! `--max-pending-handshakes` slot taken, a new agent connection is refused
//! at once (QUIC CONNECTION_REFUSED, before any crypto), counted, and the
//! refused agent neither times out nor falls back to WebSocket: it retries
//! after its spread and registers once a slot is free.

use std::time::{Duration, Instant};

use integration::pki::Pki;
use integration::process::{metric_value, AgentOptions, AgentProc, ServerOptions, ServerProc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_handshake_budget_refuses_at_once_and_the_agent_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            uds: true,
            args: vec!["--max-pending-handshakes=2".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let addr = server.agent_addr;
    // Raw QUIC connections with an agent certificate that never say hello.
    let tls = pki
        .agent_client_tls(
            "idle-node",
            &["127.0.0.1".parse().unwrap()],
            proto::ALPN_QUIC,
        )
        .unwrap();
    let tuning = transport::quic::QuicTuning::default();
    let ep = transport::quic::client_endpoint(addr, tls, &tuning).unwrap();

    // Two connections that complete TLS and never say hello hold both slots.
    let mut holders = Vec::new();
    for _ in 0..2 {
        holders.push(ep.connect(addr, "localhost").unwrap().await.unwrap());
    }
    // The third is refused at once, not left to time out.
    let started = Instant::now();
    let third = tokio::time::timeout(
        Duration::from_secs(5),
        ep.connect(addr, "localhost").unwrap(),
    )
    .await
    .expect("refused within 5 s");
    let refused_after = started.elapsed();
    match third {
        Err(quinn::ConnectionError::ConnectionClosed(c)) => {
            assert_eq!(
                c.error_code,
                quinn::TransportErrorCode::CONNECTION_REFUSED,
                "{c:?}"
            )
        }
        other => panic!("expected CONNECTION_REFUSED, got {other:?}"),
    }
    assert!(
        refused_after < Duration::from_secs(1),
        "refused after {refused_after:?}"
    );
    println!("third connection refused after {refused_after:?}");

    // A real agent (transport auto) is refused too, says why, and waits.
    let agent = AgentProc::start(
        &pki,
        addr,
        "edge-1",
        &["127.0.0.1".parse().unwrap()],
        AgentOptions::default(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.proc.logs().contains("server busy; retrying later") {
        assert!(Instant::now() < deadline, "agent:\n{}", agent.proc.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = server.metrics().unwrap();
    let refused = metric_value(
        &metrics,
        "tunnel_server_handshakes_refused_total{transport=\"quic\"}",
    )
    .unwrap_or(0.0);
    assert!(refused >= 2.0, "refusals counted: {refused}\n{metrics}");

    // Slots free: the agent registers after its spread (5 s without a hint).
    drop(holders);
    ep.close(0u32.into(), b"done");
    let freed = Instant::now();
    server
        .wait_agents(1, Duration::from_secs(30))
        .expect("agent registers once slots are free");
    println!(
        "agent registered {:?} after the slots were freed",
        freed.elapsed()
    );
    let agents = server.agents().unwrap();
    assert_eq!(agents[0]["transport"], "quic", "{agents}");
    assert!(
        !agent.proc.logs().contains("trying WebSocket"),
        "a busy refusal must not fall back to WebSocket:\n{}",
        agent.proc.logs()
    );
}
