//! Edge→cloud service streams: an agent (in-process, through its public
//! `AgentLink`) opens streams on its own connection to the real
//! tunnel-server binary, which carries them to `--apiserver`.

use std::time::{Duration, Instant};

use clap::Parser;
use integration::process::{metric_value, ServerOptions, ServerProc};
use integration::services::{echo_server, pattern, sha256_hex};
use integration::Pki;
use proto::AgentService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_agent::agent::RunningAgent;
use tunnel_agent::config::{AgentConfig, Cli};
use tunnel_agent::link::LinkError;

/// Starts an agent in this process against `server`, waits until it is connected.
async fn start_agent(pki: &Pki, server: &ServerProc, transport: &str) -> RunningAgent {
    let (cert, key) = pki
        .agent("edge-1", &["127.0.0.1".parse().unwrap()])
        .unwrap();
    let args = [
        "tunnel-agent".to_string(),
        format!("--server=localhost:{}", server.agent_addr.port()),
        "--node-name=edge-1".into(),
        format!("--tls-cert={}", cert.display()),
        format!("--tls-key={}", key.display()),
        format!("--server-ca={}", pki.path("ca.crt").display()),
        "--admin-addr=127.0.0.1:0".into(),
        format!("--transport={transport}"),
    ];
    let cfg = AgentConfig::try_from(Cli::parse_from(args)).unwrap();
    let agent = tunnel_agent::agent::start(cfg).await.unwrap();
    let deadline = Instant::now() + integration::cluster::STARTUP_LIMIT;
    while !agent.link.is_connected() {
        assert!(Instant::now() < deadline, "agent did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent
}

fn start_server(pki: &Pki, args: Vec<String>) -> ServerProc {
    tokio::task::block_in_place(|| {
        ServerProc::start(
            pki,
            ServerOptions {
                args,
                ..Default::default()
            },
        )
        .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_streams_reach_the_apiserver_over_quic_and_websocket() {
    let echo = echo_server().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let server = start_server(&pki, vec![format!("--apiserver={echo}")]);
    let payload = pattern(4 << 20, 7);
    for transport in ["quic", "websocket"] {
        let agent = start_agent(&pki, &server, transport).await;
        // Several at once, each a full round trip with half-close.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let link = agent.link.clone();
            let payload = payload.clone();
            tasks.push(tokio::spawn(async move {
                let stream = link
                    .open_service(AgentService::Apiserver, Duration::from_secs(10))
                    .await
                    .unwrap();
                let (mut rd, mut wr) = tokio::io::split(stream.into_io());
                let writer = tokio::spawn(async move {
                    wr.write_all(&payload).await.unwrap();
                    wr.shutdown().await.unwrap();
                });
                let mut back = Vec::new();
                rd.read_to_end(&mut back).await.unwrap();
                writer.await.unwrap();
                back
            }));
        }
        for t in tasks {
            let back = t.await.unwrap();
            assert_eq!(back.len(), payload.len(), "over {transport}");
            assert_eq!(sha256_hex(&back), sha256_hex(&payload), "over {transport}");
        }
        agent.shutdown().await;
    }
    let metrics = tokio::task::block_in_place(|| server.metrics()).unwrap();
    let ok = r#"tunnel_server_service_streams_total{result="ok",service="apiserver"}"#;
    assert_eq!(metric_value(&metrics, ok), Some(16.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    // No --apiserver at all.
    let server = start_server(&pki, vec![]);
    let agent = start_agent(&pki, &server, "quic").await;
    let err = agent
        .link
        .open_service(AgentService::Apiserver, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LinkError::Refused { message, .. } if message.contains("--apiserver")),
        "{err}"
    );
    agent.shutdown().await;

    // --apiserver pointing at a closed port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let server = start_server(&pki, vec![format!("--apiserver={closed}")]);
    let agent = start_agent(&pki, &server, "websocket").await;
    let err = agent
        .link
        .open_service(AgentService::Apiserver, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LinkError::Refused { kind: proto::DialErrorKind::Refused, message, .. }
            if message.contains(&closed.to_string())),
        "{err}"
    );
    agent.shutdown().await;
}
