//! Connection lifecycle: reconnect after a server restart, replacement of a
//! node's connection, registry cleanup when an agent dies, identity rules.

use std::time::{Duration, Instant};

use integration::process::metric_value;
use integration::services::echo_server;
use integration::{
    connect_uds, AgentOptions, AgentProc, Cluster, ClusterOptions, Pki, ServerOptions, ServerProc,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn uds_server(pki: &Pki, args: &[&str]) -> ServerProc {
    ServerProc::start(
        pki,
        ServerOptions {
            uds: true,
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .unwrap()
}

fn agent(pki: &Pki, server: &ServerProc, node: &str, ip: &str, opts: AgentOptions) -> AgentProc {
    AgentProc::start(pki, server.agent_addr, node, &[ip.parse().unwrap()], opts).unwrap()
}

async fn echo_once(server: &ServerProc, target: &str) -> Result<(), String> {
    let mut r = connect_uds(server.uds.as_ref().unwrap(), target)
        .await
        .map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("{} {}", r.status, r.body));
    }
    r.stream
        .write_all(b"ping")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    r.stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_is_back_within_5s_of_a_killed_server_returning() {
    let echo = echo_server().await.unwrap();
    let mut c = Cluster::start(ClusterOptions::allowing(&[echo.to_string()], &[]));
    let server = &mut c.server;
    echo_once(server, &echo.to_string()).await.unwrap();

    for (round, graceful) in [(1, false), (2, true)] {
        // A crash (SIGKILL: no goodbye to agents) and a clean stop.
        if graceful {
            server.proc.stop(Duration::from_secs(5));
        } else {
            server.proc.kill();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        server.restart().unwrap();
        let back = Instant::now();
        server
            .wait_agents(1, Duration::from_secs(5))
            .unwrap_or_else(|e| {
                panic!("round {round}: agent not back within 5 s of the server's return: {e}")
            });
        eprintln!(
            "round {round} (graceful={graceful}): agent back {:?} after the server returned",
            back.elapsed()
        );
        echo_once(server, &echo.to_string()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_leaves_the_registry_and_new_connects_get_503() {
    let echo = echo_server().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    // SIGKILL gives no goodbye: detection is the QUIC idle timeout, set short here.
    let mut server = uds_server(
        &pki,
        &["--agent-keepalive=500ms", "--agent-idle-timeout=2s"],
    );
    let mut a = agent(
        &pki,
        &server,
        "edge-1",
        "127.0.0.1",
        AgentOptions {
            allow: vec![echo.to_string()],
            args: vec!["--keepalive=500ms".into(), "--idle-timeout=2s".into()],
            ..Default::default()
        },
    );
    server.wait_agents(1, Duration::from_secs(10)).unwrap();
    a.proc.kill();
    let killed = Instant::now();
    loop {
        let r = connect_uds(server.uds.as_ref().unwrap(), &echo.to_string())
            .await
            .unwrap();
        if r.status == 503 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(4),
            "still routed to a dead agent after {:?}: {} {}",
            killed.elapsed(),
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("SIGKILLed agent unregistered after {:?}", killed.elapsed());
    assert_eq!(server.agents().unwrap(), serde_json::json!([]));
    let m = server.metrics().unwrap();
    assert_eq!(
        metric_value(&m, "tunnel_server_agents_connected{transport=\"quic\"}"),
        Some(0.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_for_a_node_replaces_the_old_one() {
    let echo = echo_server().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let mut server = uds_server(&pki, &[]);
    let opts = AgentOptions {
        allow: vec![echo.to_string()],
        ..Default::default()
    };
    let mut first = agent(&pki, &server, "edge-1", "127.0.0.1", opts.clone());
    server.wait_agents(1, Duration::from_secs(10)).unwrap();
    let since1 = server.agents().unwrap()[0]["connected_since"].clone();
    // A second agent process for the same node (e.g. a restarted pod whose old one lingers).
    let second = agent(&pki, &server, "edge-1", "127.0.0.1", opts);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let agents = server.agents().unwrap();
        if agents.as_array().map(|a| a.len()) == Some(1) && agents[0]["connected_since"] != since1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "second connection never replaced the first: {agents}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.proc.logs().contains("replacing previous connection"));
    // Stop the first one: the replacement stays registered and carries traffic.
    first.proc.stop(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The first agent may have reconnected and replaced again; either way one entry, working.
    echo_once(&server, &echo.to_string()).await.unwrap();
    assert_eq!(
        server.agents().unwrap().as_array().map(|a| a.len()),
        Some(1)
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_node_a_cannot_register_node_b_or_a_foreign_ip() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let server = uds_server(&pki, &[]);
    // Certificate for edge-a, agent claims edge-b.
    let claim_b = agent(
        &pki,
        &server,
        "edge-a",
        "127.0.0.1",
        AgentOptions {
            node_name_override: Some("edge-b".into()),
            ..Default::default()
        },
    );
    // Certificate for edge-c with 127.0.0.3, agent claims 127.0.0.9 too.
    let foreign_ip = agent(
        &pki,
        &server,
        "edge-c",
        "127.0.0.3",
        AgentOptions {
            args: vec!["--node-ip=127.0.0.3".into(), "--node-ip=127.0.0.9".into()],
            ..Default::default()
        },
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = server.proc.logs();
        if logs.contains("claims node \"edge-b\" but its certificate is for node \"edge-a\"")
            && logs.contains("claims IP 127.0.0.9, which is not in its certificate")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no refusal logged:\n{logs}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.agents().unwrap(), serde_json::json!([]));
    for target in [
        "edge-a:10250",
        "edge-b:10250",
        "127.0.0.9:10250",
        "127.0.0.1:10250",
    ] {
        let r = connect_uds(server.uds.as_ref().unwrap(), target)
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{target}: {}", r.body);
    }
    // The agents learn why, too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(claim_b
        .proc
        .logs()
        .contains("server refused registration (name_mismatch)")
        && foreign_ip
            .proc
            .logs()
            .contains("server refused registration (ip_not_in_certificate)"))
    {
        assert!(
            Instant::now() < deadline,
            "agents did not log the refusal:\n{}\n{}",
            claim_b.proc.logs(),
            foreign_ip.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = server.metrics().unwrap();
    assert!(
        m.contains("tunnel_server_agent_rejections_total{reason=\"name_mismatch\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_metrics_and_readiness_follow_the_connection() {
    let echo = echo_server().await.unwrap();
    // The server is killed without a restart: the agent notices at its idle
    // timeout (30 s by default), shortened here.
    let quick = ["--keepalive=1s", "--idle-timeout=4s"];
    let mut c = Cluster::start(ClusterOptions::allowing(&[echo.to_string()], &quick));
    let (server, a) = (&mut c.server, c.agent.as_ref().unwrap());
    echo_once(server, &echo.to_string()).await.unwrap();
    let _ = connect_uds(server.uds.as_ref().unwrap(), "127.0.0.1:1")
        .await
        .unwrap();
    let (status, _) = integration::process::http_get(a.admin_addr, "/readyz").unwrap();
    assert_eq!(status, 200);
    let m = a.metrics().unwrap();
    let connected = format!(
        "tunnel_agent_connected{{server=\"{}\",transport=\"quic\"}}",
        server.agent_addr
    );
    assert_eq!(metric_value(&m, &connected), Some(1.0), "{m}");
    assert_eq!(
        metric_value(
            &m,
            "tunnel_agent_dial_failures_total{reason=\"not_allowed\"}"
        ),
        Some(1.0),
        "{m}"
    );
    server.proc.kill();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _) = integration::process::http_get(a.admin_addr, "/readyz").unwrap();
        if status == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "agent still ready long after the server died"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let m = a.metrics().unwrap();
    assert_eq!(metric_value(&m, &connected), Some(0.0), "{m}");
}
