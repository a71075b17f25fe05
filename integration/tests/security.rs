//! Front-end identity and enrollment hardening (issue 12, findings 1, 7, 10),
//! through the real binaries: agent certificates are never front-end
//! credentials, revoked names are refused on `--proxy-addr`, enrollment is
//! rate-limited per source with one answer for every bad token, and the
//! revocation file is read in full.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::client::{connect_tls, proxy_tls};
use integration::services::echo_server;
use integration::{
    AgentOptions, AgentProc, Cluster, ClusterOptions, Pki, ServerOptions, ServerProc,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A cluster with the mTLS front end; `extra` server flags come last (they win).
fn with_proxy(extra: &[&str], allow: &[String]) -> Cluster {
    let mut opts = ClusterOptions::allowing(allow, &[]).server_args(extra);
    opts.server.proxy = true;
    Cluster::start(opts)
}

fn path_arg(flag: &str, p: &Path) -> String {
    format!("--{flag}={}", p.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_certificates_are_never_front_end_credentials() {
    let echo = echo_server().await.unwrap();
    let allow = [echo.to_string()];
    // The setup `certs init` now documents: a separate front-end client CA.
    let s = with_proxy(&[], &allow);
    let ca = s.pki.path("ca.crt");
    let addr = s.server.proxy_addr.unwrap();
    let agent = (
        s.pki.path("agent-edge-1.crt"),
        s.pki.path("agent-edge-1.key"),
    );
    let as_agent = proxy_tls(&ca, Some((&agent.0, &agent.1))).unwrap();
    match connect_tls(&as_agent, addr, &echo.to_string()).await {
        Ok(r) => assert_ne!(r.status, 200, "agent certificate accepted: {}", r.body),
        Err(e) => println!("agent certificate refused by the TLS handshake: {e}"),
    }
    let client = (
        s.pki.path("proxy-client.crt"),
        s.pki.path("proxy-client.key"),
    );
    let good = proxy_tls(&ca, Some((&client.0, &client.1))).unwrap();
    let r = connect_tls(&good, addr, &echo.to_string()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    drop(s);

    // The old, unsafe setup (agent CA as --proxy-client-ca, no --proxy-client-name):
    // the agent certificate chains, and is still refused by what it is.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let unsafe_ca = path_arg("proxy-client-ca", &pki.path("ca.crt"));
    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            proxy: true,
            args: vec![unsafe_ca],
            ..Default::default()
        },
    )
    .unwrap();
    let _agent = AgentProc::start(
        &pki,
        server.agent_addr,
        "edge-1",
        &["127.0.0.1".parse().unwrap()],
        AgentOptions {
            allow: allow.to_vec(),
            ..Default::default()
        },
    )
    .unwrap();
    // edge-2's certificate, used against edge-1's services (the finding).
    let (c2, k2) = pki
        .agent("edge-2", &["127.0.0.2".parse().unwrap()])
        .unwrap();
    server.wait_agents(1, Duration::from_secs(30)).unwrap();
    let addr = server.proxy_addr.unwrap();
    let as_edge2 = proxy_tls(&pki.path("ca.crt"), Some((&c2, &k2))).unwrap();
    let r = connect_tls(&as_edge2, addr, &echo.to_string())
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("system:node:edge-2") && r.body.contains("system:nodes"),
        "{}",
        r.body
    );
    let m = server.metrics().unwrap();
    assert!(
        m.contains("tunnel_server_frontend_refusals_total{reason=\"agent_certificate\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_front_end_client_is_refused() {
    let echo = echo_server().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let revoked = dir.path().join("revoked");
    let s = with_proxy(
        &[&path_arg("revocation-file", &revoked)],
        &[echo.to_string()],
    );
    let ca = s.pki.path("ca.crt");
    let (cert, key) = (
        s.pki.path("proxy-client.crt"),
        s.pki.path("proxy-client.key"),
    );
    let client = proxy_tls(&ca, Some((&cert, &key))).unwrap();
    let addr = s.server.proxy_addr.unwrap();
    let r = connect_tls(&client, addr, &echo.to_string()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    let out = std::process::Command::new(integration::process::bin("tunnel-server"))
        .args(["certs", "revoke", "--node", "kube-apiserver-proxy-client"])
        .arg("--revocation-file")
        .arg(&revoked)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    loop {
        let r = connect_tls(&client, addr, &echo.to_string()).await.unwrap();
        if r.status == 403 {
            assert!(r.body.contains("revoked"), "{}", r.body);
            assert!(r.body.contains("kube-apiserver-proxy-client"), "{}", r.body);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still accepted after revocation: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "revoked client refused {:?} after `certs revoke`",
        started.elapsed()
    );
}

/// One enrollment request with a raw HTTP/1.1 POST; returns (status, Retry-After, body).
async fn enroll(pki: &Pki, addr: SocketAddr, token: &str) -> (u16, Option<String>, String) {
    let roots = certs::load_root_store(&pki.path("ca.crt")).unwrap();
    let tls =
        certs::enroll_client_config(roots, vec![proto::enroll::ALPN_ENROLL.to_vec()]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let body = "not a csr";
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        proto::enroll::ENROLL_PATH,
        body.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let retry = text.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after: ")
            .map(str::to_owned)
    });
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, retry, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_is_rate_limited_and_bad_tokens_look_alike() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let token = pki
        .token("edge-9", &["127.0.0.9".parse().unwrap()], "1h")
        .unwrap();
    let id = token.split('.').next().unwrap();
    let server = ServerProc::start(
        &pki,
        ServerOptions {
            args: vec![
                path_arg("token-dir", &pki.token_dir()),
                path_arg("agent-ca-key", &pki.path("ca.key")),
                "--enroll-attempts-per-minute=3".into(),
            ],
            ..Default::default()
        },
    )
    .unwrap();
    let addr = server.agent_addr;
    let unknown = enroll(&pki, addr, "zzzzzz.0123456789abcdef").await;
    let wrong = enroll(&pki, addr, &format!("{id}.0000000000000000")).await;
    assert_eq!(unknown.0, 403, "{}", unknown.2);
    assert_eq!(
        (unknown.0, &unknown.2),
        (wrong.0, &wrong.2),
        "unknown id and wrong secret must read the same"
    );
    assert!(unknown.2.contains("not valid"), "{}", unknown.2);
    let third = enroll(&pki, addr, "garbage").await;
    assert_eq!(third.0, 403, "{}", third.2);
    let limited = enroll(&pki, addr, &token).await;
    assert_eq!(limited.0, 429, "{}", limited.2);
    let retry: u64 = limited.1.expect("Retry-After").trim().parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");
    assert!(
        limited.2.contains("--enroll-attempts-per-minute"),
        "{}",
        limited.2
    );
    let m = server.metrics().unwrap();
    assert!(
        m.contains(
            "tunnel_server_certificate_requests_total{kind=\"enroll\",result=\"rate_limited\"} 1"
        ),
        "{m}"
    );
    // The log names the exact causes, one line per second at most.
    let logs = server.proc.logs();
    assert!(logs.contains("unknown bootstrap token"), "{logs}");
    assert!(logs.matches("enrollment refused").count() <= 2, "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revocation_file_is_read_past_one_mebibyte() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let revoked = dir.path().join("revoked");
    // 2 MiB of other nodes' entries, then edge-1's (the old reader stopped at 1 MiB).
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 2 * 1024 * 1024 {
        text.push_str(&format!("padding-node-{i} 1\n"));
        i += 1;
    }
    text.push_str(&format!("edge-1 {}\n", i64::MAX / 2));
    std::fs::write(&revoked, &text).unwrap();
    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            args: vec![path_arg("revocation-file", &revoked)],
            ..Default::default()
        },
    )
    .unwrap();
    let _agent = AgentProc::start(
        &pki,
        server.agent_addr,
        "edge-1",
        &["127.0.0.1".parse().unwrap()],
        AgentOptions::default(),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.proc.logs().contains("refusing agent") {
        assert!(
            server.wait_agents(1, Duration::from_millis(200)).is_err(),
            "revoked agent registered:\n{}",
            server.proc.logs()
        );
        assert!(Instant::now() < deadline, "{}", server.proc.logs());
    }
    drop(server);

    // Past the 16 MiB bound: a clear startup error, not a silently cut list.
    let big = dir.path().join("big");
    let line = "padding-node 1\n";
    std::fs::write(&big, line.repeat(17 * 1024 * 1024 / line.len() + 1)).unwrap();
    let err = ServerProc::start(
        &pki,
        ServerOptions {
            args: vec![path_arg("revocation-file", &big)],
            ..Default::default()
        },
    )
    .err()
    .expect("server refuses a deny list past the bound");
    assert!(err.to_string().contains("larger than"), "{err}");
}
