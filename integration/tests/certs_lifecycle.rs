//! Certificate lifecycle with the real binaries: bootstrap-token enrollment, rotation of
//! short-lived certificates under a long stream, server certificate reload, revocation,
//! and clear errors for bad certificate files.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::process::{bin, metric_value};
use integration::services::echo_server;
use integration::{connect_uds, AgentOptions, AgentProc, Pki, ServerOptions, ServerProc};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

fn ips() -> Vec<IpAddr> {
    vec![IpAddr::from(LOOPBACK)]
}

/// A server that can enroll (tokens in the PKI's token dir) and renew, plus `extra` flags.
fn issuing_server(pki: &Pki, extra: &[&str]) -> ServerProc {
    let mut args = vec![
        format!("--token-dir={}", pki.token_dir().display()),
        format!("--agent-ca-key={}", pki.path("ca.key").display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    ServerProc::start(
        pki,
        ServerOptions {
            uds: true,
            args,
            ..Default::default()
        },
    )
    .unwrap()
}

/// An agent for `node` whose certificate files do not exist yet, enrolling with `token`.
fn enrolling_agent(
    pki: &Pki,
    server: &ServerProc,
    node: &str,
    token: &str,
    tag: &str,
) -> AgentProc {
    let dir = pki.path(&format!("enrolled-{tag}"));
    AgentProc::start_with_files(
        pki,
        server.agent_addr,
        node,
        &dir.join("agent.crt"),
        &dir.join("agent.key"),
        AgentOptions {
            args: vec![format!("--bootstrap-token={token}")],
            ..Default::default()
        },
    )
    .unwrap()
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

fn agents_connected(server: &ServerProc) -> usize {
    server
        .agents()
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0)
}

/// Writes `contents` to `path` the way a careful operator does: temp file, then rename.
fn replace_file(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn run_server_cli(args: &[&str]) -> String {
    let out = std::process::Command::new(bin("tunnel-server"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn enrollment_with_a_token_is_single_use_expiring_and_bound_to_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let mut server = issuing_server(&pki, &[]);

    // From nothing: no certificate, no key, only a token.
    let token = pki.token("edge-a", &ips(), "1h").unwrap();
    let on_disk = std::fs::read_dir(pki.token_dir()).unwrap().count();
    assert_eq!(on_disk, 1);
    let secret = token.split('.').nth(1).unwrap().to_string();
    for f in std::fs::read_dir(pki.token_dir()).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(
            !text.contains(&secret),
            "the token dir must not hold the secret"
        );
    }
    let a = enrolling_agent(&pki, &server, "edge-a", &token, "a");
    server.wait_agents(1, Duration::from_secs(30)).unwrap();
    let key = pki.path("enrolled-a/agent.key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "enrolled key mode");
    let cert = CertificateDer::from_pem_file(pki.path("enrolled-a/agent.crt")).unwrap();
    let id = certs::agent_identity(&cert).unwrap();
    assert_eq!((id.node_name.as_str(), id.node_ips), ("edge-a", ips()));
    let agents = server.agents().unwrap();
    assert_eq!(agents[0]["node"], "edge-a");

    // The same token again (another fresh node directory): refused as already used.
    let again = enrolling_agent(&pki, &server, "edge-a", &token, "a-again");
    // An expired token.
    let short = pki.token("edge-c", &ips(), "1s").unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let expired = enrolling_agent(&pki, &server, "edge-c", &short, "c");
    // A token for edge-d used by node edge-b.
    let for_d = pki.token("edge-d", &ips(), "1h").unwrap();
    let mut wrong_node = enrolling_agent(&pki, &server, "edge-b", &for_d, "b");

    for (agent, expect) in [
        (&again, "already used"),
        (&expired, "expired"),
        (&wrong_node, "\"edge-d\""),
    ] {
        assert!(
            wait_until(Duration::from_secs(20), || {
                let log = agent.proc.logs();
                log.contains("ENROLLMENT REFUSED") && log.contains(expect)
            }),
            "{} should be refused with {expect:?}:\n{}",
            agent.node,
            agent.proc.logs()
        );
    }
    let metrics = server.metrics().unwrap();
    for result in ["token_used", "token_expired", "identity_mismatch"] {
        let sample = format!(
            "tunnel_server_certificate_requests_total{{kind=\"enroll\",result=\"{result}\"}}"
        );
        assert_eq!(
            metric_value(&metrics, &sample),
            Some(1.0),
            "{sample}\n{metrics}"
        );
    }
    // Refused agents keep running (not ready) rather than crash-looping.
    assert!(wrong_node.proc.is_running());
    let (status, _) = integration::process::http_get(wrong_node.admin_addr, "/readyz").unwrap();
    assert_eq!(status, 503);
    assert!(!pki.path("enrolled-b/agent.crt").exists());
    // The refused token for edge-d is still good for edge-d.
    let d = enrolling_agent(&pki, &server, "edge-d", &for_d, "d");
    server.wait_agents(2, Duration::from_secs(30)).unwrap();
    drop((a, d));
}

/// Echoes `chunk` through `stream` and checks it comes back intact.
async fn echo_chunk(stream: &mut tokio::net::UnixStream, chunk: &[u8]) -> std::io::Result<()> {
    stream.write_all(chunk).await?;
    let mut back = vec![0u8; chunk.len()];
    stream.read_exact(&mut back).await?;
    if back != chunk {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_second_certificates_rotate_for_three_minutes_under_a_long_stream() {
    rotate_under_a_long_stream("quic", Duration::from_secs(180), 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_second_certificates_rotate_over_websocket_too() {
    rotate_under_a_long_stream("websocket", Duration::from_secs(60), 2).await;
}

/// Agent on `transport` with 30-second certificates, one stream echoing for `run_for`:
/// the stream never breaks, the agent never reconnects, and it renews at least
/// `min_renewals` times over its connection.
async fn rotate_under_a_long_stream(transport: &str, run_for: Duration, min_renewals: usize) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let echo = echo_server().await.unwrap();
    let mut server = issuing_server(&pki, &["--agent-cert-ttl=30s"]);
    let (cert, key) = pki
        .agent_valid_for("edge-1", &ips(), Duration::from_secs(30))
        .unwrap();
    let first_cert = std::fs::read_to_string(&cert).unwrap();
    let opts = AgentOptions {
        allow: vec![echo.to_string()],
        args: vec![format!("--transport={transport}")],
        ..Default::default()
    };
    let mut agent =
        AgentProc::start_with_files(&pki, server.agent_addr, "edge-1", &cert, &key, opts.clone())
            .unwrap();
    server.wait_agents(1, Duration::from_secs(30)).unwrap();

    let uds = server.uds.clone().unwrap();
    let mut reply = connect_uds(&uds, &echo.to_string()).await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let chunk: Vec<u8> = (0..16 * 1024).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let mut echoed = 0usize;
    while started.elapsed() < run_for {
        echo_chunk(&mut reply.stream, &chunk)
            .await
            .unwrap_or_else(|e| panic!("stream broke after {:?}: {e}", started.elapsed()));
        echoed += chunk.len();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let agent_log = agent.proc.logs();
    let renewals = agent_log.matches("certificate renewed").count();
    let agent_metrics = agent.metrics().unwrap();
    let reconnects = metric_value(&agent_metrics, "tunnel_agent_reconnects_total").unwrap();
    let expiry = metric_value(
        &agent_metrics,
        "tunnel_agent_certificate_expiry_timestamp_seconds",
    )
    .unwrap();
    let server_log = server.proc.logs();
    println!(
        "{transport}, {run_for:?}: {echoed} bytes echoed on one stream, {renewals} renewals, {reconnects} reconnects, \
         {} registrations",
        server_log.matches("agent registered").count()
    );
    assert!(
        renewals >= min_renewals,
        "expected a renewal every ~20 s:\n{agent_log}"
    );
    // Renewed over the agent's own connection (a service stream), as the server counts it.
    let renewed_by_server = metric_value(
        &server.metrics().unwrap(),
        "tunnel_server_service_streams_total{result=\"issued\",service=\"renew_certificate\"}",
    );
    assert_eq!(
        renewed_by_server,
        Some(renewals as f64),
        "server-side renewals"
    );
    assert_eq!(reconnects, 0.0, "{agent_log}");
    assert!(
        !agent_log.contains("disconnected from the server"),
        "{agent_log}"
    );
    assert_eq!(
        server_log.matches("agent registered").count(),
        1,
        "{server_log}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(
        expiry > now,
        "the agent's certificate metric shows a current certificate"
    );
    assert_ne!(std::fs::read_to_string(&cert).unwrap(), first_cert);

    // The next connection uses the renewed files (the first certificate expired long ago).
    drop(reply);
    agent.proc.stop(Duration::from_secs(5));
    server
        .wait_ready("/readyz", Duration::from_secs(5))
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || agents_connected(
        &server
    ) == 0));
    let _again =
        AgentProc::start_with_files(&pki, server.agent_addr, "edge-1", &cert, &key, opts).unwrap();
    server.wait_agents(1, Duration::from_secs(30)).unwrap();
}

/// The certificate the server presents at `addr` (offering `alpn`) right now.
async fn served_certificate(
    pki: &Pki,
    addr: std::net::SocketAddr,
    alpn: &[u8],
) -> CertificateDer<'static> {
    let roots = certs::load_root_store(&pki.path("ca.crt")).unwrap();
    let tls = certs::enroll_client_config(roots, vec![alpn.to_vec()]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    conn.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_replaced_on_disk_is_served_without_dropping_agents() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let echo = echo_server().await.unwrap();
    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            uds: true,
            proxy: true,
            ..Default::default()
        },
    )
    .unwrap();
    let agent_port = server.agent_addr;
    let proxy_port = server.proxy_addr.unwrap();
    let enroll_alpn = proto::enroll::ALPN_ENROLL;
    let opts = AgentOptions {
        allow: vec![echo.to_string()],
        ..Default::default()
    };
    let agent = AgentProc::start(&pki, server.agent_addr, "edge-1", &ips(), opts.clone()).unwrap();
    server.wait_agents(1, Duration::from_secs(30)).unwrap();
    let mut reply = connect_uds(server.uds.as_ref().unwrap(), &echo.to_string())
        .await
        .unwrap();
    echo_chunk(&mut reply.stream, b"before").await.unwrap();
    let old = CertificateDer::from_pem_file(pki.path("server.crt")).unwrap();
    assert_eq!(served_certificate(&pki, agent_port, enroll_alpn).await, old);

    // SIGHUP reloads at once (unchanged files are only re-read on a signal, so the log
    // line proves the signal path) and drops nobody.
    assert!(!server.proc.logs().contains("server certificate loaded"));
    server.proc.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(
        wait_until(Duration::from_secs(10), || server
            .proc
            .logs()
            .contains("server certificate loaded")),
        "{}",
        server.proc.logs()
    );
    echo_chunk(&mut reply.stream, b"after sighup")
        .await
        .unwrap();

    let new = pki
        .ca()
        .unwrap()
        .issue_server("localhost", &ips(), Duration::from_secs(30 * 86_400))
        .unwrap();
    replace_file(&pki.path("server.key"), &new.key_pem);
    replace_file(&pki.path("server.crt"), &new.cert_pem);
    let new_der = CertificateDer::from_pem_slice(new.cert_pem.as_bytes()).unwrap();
    let started = Instant::now();
    let mut served = old.clone();
    while started.elapsed() < Duration::from_secs(15) && served != new_der {
        tokio::time::sleep(Duration::from_millis(200)).await;
        served = served_certificate(&pki, agent_port, enroll_alpn).await;
    }
    assert_eq!(served, new_der, "new handshakes see the new certificate");
    assert_eq!(
        served_certificate(&pki, proxy_port, b"http/1.1").await,
        new_der,
        "--proxy-addr serves it too"
    );
    println!(
        "new certificate served {:?} after the files were replaced",
        started.elapsed()
    );
    let expiry = metric_value(
        &server.metrics().unwrap(),
        "tunnel_server_certificate_expiry_timestamp_seconds",
    )
    .unwrap();
    assert_eq!(expiry as i64, certs::not_after_unix(&new_der).unwrap());

    // The existing agent and its stream are untouched; a new agent connects.
    echo_chunk(&mut reply.stream, b"after").await.unwrap();
    let m = agent.metrics().unwrap();
    assert_eq!(metric_value(&m, "tunnel_agent_reconnects_total"), Some(0.0));
    let _second = AgentProc::start(
        &pki,
        server.agent_addr,
        "edge-2",
        &["127.0.0.2".parse().unwrap()],
        opts,
    )
    .unwrap();
    server.wait_agents(2, Duration::from_secs(30)).unwrap();

    // A truncated replacement is refused by name; the good certificate stays in use.
    let truncated = &new.cert_pem[..new.cert_pem.len() / 2];
    let other = pki
        .ca()
        .unwrap()
        .issue_server("localhost", &ips(), Duration::from_secs(86_400))
        .unwrap();
    replace_file(&pki.path("server.key"), &other.key_pem);
    replace_file(&pki.path("server.crt"), truncated);
    let crt = pki.path("server.crt").display().to_string();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let log = server.proc.logs();
            log.contains("certificate reload failed") && log.contains(&crt)
        }),
        "{}",
        server.proc.logs()
    );
    assert_eq!(
        served_certificate(&pki, agent_port, enroll_alpn).await,
        new_der
    );
    echo_chunk(&mut reply.stream, b"still").await.unwrap();
}

#[test]
fn a_revoked_node_is_cut_off_within_2s_refused_and_can_re_enroll() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let deny = pki.path("revoked-nodes");
    let mut server = issuing_server(&pki, &[&format!("--revocation-file={}", deny.display())]);
    let mut agent = AgentProc::start(
        &pki,
        server.agent_addr,
        "edge-1",
        &ips(),
        AgentOptions::default(),
    )
    .unwrap();
    server.wait_agents(1, Duration::from_secs(30)).unwrap();

    let deny_arg = deny.display().to_string();
    run_server_cli(&[
        "certs",
        "revoke",
        "--revocation-file",
        &deny_arg,
        "--node",
        "edge-1",
    ]);
    let revoked = Instant::now();
    assert!(wait_until(Duration::from_secs(10), || agents_connected(
        &server
    ) == 0));
    let took = revoked.elapsed();
    println!("revoked node disconnected after {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "disconnect took {took:?} (target 2 s)"
    );

    // The agent keeps trying and is refused every time, with a reason it logs.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let m = server.metrics().unwrap_or_default();
            metric_value(
                &m,
                "tunnel_server_agent_rejections_total{reason=\"revoked\"}",
            )
            .is_some_and(|n| n >= 1.0)
        }),
        "{}",
        server.proc.logs()
    );
    assert!(wait_until(Duration::from_secs(10), || agent
        .proc
        .logs()
        .contains("revoked")));
    assert!(agent.proc.is_running());
    assert_eq!(agents_connected(&server), 0);
    agent.proc.kill();

    // A new token re-enrolls the node; its new certificate starts after the revocation.
    std::thread::sleep(Duration::from_millis(1100));
    let token = pki.token("edge-1", &ips(), "1h").unwrap();
    let _fresh = enrolling_agent(&pki, &server, "edge-1", &token, "re");
    server.wait_agents(1, Duration::from_secs(30)).unwrap();
}

fn half_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text[..text.len() / 2].to_string()
}

/// Starts a server with `flag` replaced; returns its error output (it must fail).
fn server_failure(pki: &Pki, flag: &str, value: &Path) -> String {
    let err = ServerProc::start(
        pki,
        ServerOptions {
            args: vec![format!("--{flag}={}", value.display())],
            ..Default::default()
        },
    )
    .err()
    .expect("the server must refuse to start");
    err.to_string()
}

#[test]
fn bad_certificate_files_are_named_and_the_agent_keeps_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let truncated = pki.path("truncated.crt");
    std::fs::write(&truncated, half_of(&pki.path("server.crt"))).unwrap();
    let missing = pki.path("missing.key");
    let (_, other_key) = pki.agent("other", &ips()).unwrap();

    // The server refuses to start, naming the file and the reason.
    for (flag, path, why) in [
        ("tls-cert", &truncated, "PEM"),
        ("tls-key", &missing, "No such file"),
        ("tls-key", &other_key, "does not match"),
    ] {
        let err = server_failure(&pki, flag, path);
        let name = path.display().to_string();
        assert!(err.contains(&name) && err.contains(why), "--{flag}: {err}");
    }

    // The agent says which file is bad and why, keeps running, and recovers once fixed.
    let mut server = ServerProc::start(&pki, ServerOptions::default()).unwrap();
    let (cert, key) = pki.agent("edge-1", &ips()).unwrap();
    let good_cert = std::fs::read_to_string(&cert).unwrap();
    let good_key = std::fs::read_to_string(&key).unwrap();
    let cases: [(&PathBuf, String, &str); 3] = [
        (&cert, half_of(&cert), "PEM"),
        (
            &key,
            std::fs::read_to_string(&other_key).unwrap(),
            "does not match",
        ),
        (&key, String::new(), "empty"),
    ];
    for (bad_path, bad_text, why) in cases {
        replace_file(bad_path, &bad_text);
        let mut agent = AgentProc::start_with_files(
            &pki,
            server.agent_addr,
            "edge-1",
            &cert,
            &key,
            AgentOptions::default(),
        )
        .unwrap();
        let name = bad_path.display().to_string();
        assert!(
            wait_until(Duration::from_secs(15), || {
                let log = agent.proc.logs();
                log.matches("cannot use the certificate files").count() >= 2
                    && log.contains(&name)
                    && log.contains(why)
            }),
            "{name} ({why}):\n{}",
            agent.proc.logs()
        );
        assert!(agent.proc.is_running(), "the agent must not exit");
        replace_file(&cert, &good_cert);
        replace_file(&key, &good_key);
        server.wait_agents(1, Duration::from_secs(45)).unwrap();
        agent.proc.stop(Duration::from_secs(5));
        assert!(wait_until(Duration::from_secs(20), || agents_connected(
            &server
        ) == 0));
    }
}
