//! The SNI passthrough front end (`--kubelet-addr`) and the DNS hosts file
//! (`--dns-hosts-file`), on loopback with the real binaries: `curl` dials
//! `https://edge-1:PORT` (resolved to the server with `--resolve`) and
//! reaches the kubelet stand-in behind edge-1's agent with the stand-in's own
//! certificate and client authentication; refusals are TLS alerts; thousands
//! of idle connections cost bounded memory and are closed cleanly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration::kubelet::{kubelet_on, KubeletPki};
use integration::process::{free_port, metric_value, raise_fd_limit, rss_kib};
use integration::{AgentOptions, AgentProc, Cluster, ClusterOptions, ServerOptions, ServerProc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A cluster whose server has `--kubelet-addr` (and `extra` flags) and whose
/// edge-1 agent may dial the kubelet stand-in's port; returns it with the
/// SNI address and the stand-in's PKI.
async fn sni_cluster(dir: &Path, extra: &[&str]) -> (Cluster, SocketAddr, KubeletPki) {
    let kubelet_port = free_port();
    let sni: SocketAddr = SocketAddr::new(LOCALHOST, free_port());
    let mut args = vec![
        format!("--kubelet-addr={sni}"),
        format!("--kubelet-port={kubelet_port}"),
        "--node-domain=nodes.example".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = Cluster::start(
        ClusterOptions::allowing(&[format!("127.0.0.1:{kubelet_port}")], &[]).server_args(&args),
    );
    let kpki = KubeletPki::new(dir).unwrap();
    let tls = kpki
        .server_config("edge-1", &["edge-1.nodes.example".into()], &[LOCALHOST])
        .unwrap();
    kubelet_on(SocketAddr::new(LOCALHOST, kubelet_port), "edge-1", tls)
        .await
        .unwrap();
    (cluster, sni, kpki)
}

/// Runs curl off the runtime's threads; (exit code, stdout, stderr).
async fn curl(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(&args)
            .output()
            .expect("curl is installed");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// `curl --resolve NAME:PORT:127.0.0.1 https://NAME:PORT/path` plus `extra`.
fn curl_args(name: &str, sni: SocketAddr, path: &str, extra: &[&Path]) -> Vec<String> {
    let mut a = vec![
        "--resolve".to_string(),
        format!("{name}:{}:127.0.0.1", sni.port()),
    ];
    a.extend(extra.iter().map(|p| p.display().to_string()));
    a.push(format!("https://{name}:{}{path}", sni.port()));
    a
}

fn metric(server: &ServerProc, sample: &str) -> f64 {
    metric_value(&server.metrics().unwrap(), sample).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_the_edge_kubelet_by_name_with_its_own_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, sni, kpki) = sni_cluster(tmp.path(), &[]).await;
    let ca = kpki.ca_path();
    let (cert, key) = kpki.client("metrics-server").unwrap();

    let cacert: [&Path; 2] = [Path::new("--cacert"), &ca];
    let (code, out, err) = curl(curl_args("edge-1", sni, "/healthz", &cacert)).await;
    assert_eq!(code, 0, "{err}\n{}", cluster.server.proc.logs());
    assert_eq!(out, "kubelet edge-1 path /healthz client anonymous\n");

    // Client-certificate authentication is between curl and the kubelet.
    let with_cert: [&Path; 6] = [
        Path::new("--cacert"),
        &ca,
        Path::new("--cert"),
        &cert,
        Path::new("--key"),
        &key,
    ];
    let (code, out, err) = curl(curl_args("edge-1", sni, "/stats/summary", &with_cert)).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "kubelet edge-1 path /stats/summary client metrics-server\n"
    );

    // A name under --node-domain routes to the same node.
    let (code, out, err) = curl(curl_args("edge-1.nodes.example", sni, "/", &cacert)).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "kubelet edge-1 path / client anonymous\n");

    // The certificate curl sees is the kubelet's, not the tunnel's: trusting
    // only the tunnel CA fails verification (curl exit 60).
    let tunnel_ca_path = cluster.pki.path("ca.crt");
    let tunnel_ca: [&Path; 2] = [Path::new("--cacert"), &tunnel_ca_path];
    let (code, _, err) = curl(curl_args("edge-1", sni, "/", &tunnel_ca)).await;
    assert_eq!(code, 60, "{err}");

    let s = &cluster.server;
    assert_eq!(
        metric(
            s,
            "tunnel_server_streams_total{frontend=\"sni\",result=\"ok\"}"
        ),
        4.0
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(s, "tunnel_server_streams_active{frontend=\"sni\"}") != 0.0 {
        assert!(Instant::now() < deadline, "{}", s.metrics().unwrap());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first flight of a rustls client for `name` (no SNI for an IP).
fn client_hello(name: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(certs::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Sends `bytes` (then half-closes if `eof`) and reads until the server
/// closes; what it sent, and how long the close took. A reset is a failure.
async fn exchange(sni: SocketAddr, bytes: &[u8], eof: bool) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(sni).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if eof {
        s.shutdown().await.unwrap();
    }
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut got))
        .await
        .expect("server closes the connection")
        .expect("a clean close, not a reset");
    (got, started.elapsed())
}

fn alert(description: u8) -> Vec<u8> {
    vec![21, 3, 3, 0, 2, 2, description]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_connections_get_a_fitting_tls_alert() {
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, sni, _kpki) = sni_cluster(tmp.path(), &["--header-timeout=2s"]).await;
    // edge-2's agent keeps its default allowlist (kubelet ports only).
    let mut server = cluster.server;
    let _edge2 = AgentProc::start(
        &cluster.pki,
        server.agent_addr,
        "edge-2",
        &[LOCALHOST],
        AgentOptions::default(),
    )
    .unwrap();
    server.wait_agents(2, Duration::from_secs(30)).unwrap();

    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        (
            "plain HTTP",
            b"GET / HTTP/1.1\r\nHost: edge-1\r\n\r\n".to_vec(),
            50,
        ),
        ("no SNI (IP literal)", client_hello("127.0.0.1"), 112),
        ("unknown node", client_hello("edge-9"), 112),
        ("not in edge-2's allowlist", client_hello("edge-2"), 49),
        (
            "garbled hello",
            {
                let mut h = client_hello("edge-1");
                h[5] = 2; // a ServerHello where the ClientHello belongs
                h
            },
            50,
        ),
    ];
    for (what, bytes, want) in &cases {
        let (got, _) = exchange(sni, bytes, false).await;
        assert_eq!(got, alert(*want), "{what}");
    }
    // A hello cut short by the client's EOF: no one left to alert.
    let hello = client_hello("edge-1");
    let (got, _) = exchange(sni, &hello[..40], true).await;
    assert!(got.is_empty(), "{got:?}");
    // A hello that never completes: alert after --header-timeout.
    let (got, took) = exchange(sni, &hello[..40], false).await;
    assert_eq!(got, alert(50));
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(8),
        "{took:?}"
    );

    let m = server.metrics().unwrap();
    for (reason, n) in [
        ("not_tls", 1.0),
        ("no_server_name", 1.0),
        ("not_client_hello", 1.0),
        ("closed", 1.0),
        ("timeout", 1.0),
    ] {
        let sample = format!(
            "tunnel_server_passthrough_refused_total{{frontend=\"sni\",reason=\"{reason}\"}}"
        );
        assert_eq!(metric_value(&m, &sample), Some(n), "{sample}\n{m}");
    }
    for (result, n) in [("no_agent", 1.0), ("not_allowed", 1.0)] {
        let sample = format!("tunnel_server_streams_total{{frontend=\"sni\",result=\"{result}\"}}");
        assert_eq!(metric_value(&m, &sample), Some(n), "{sample}\n{m}");
    }
}

const IDLE_CONNS: usize = 5_000;
/// Most the server's memory may grow holding them (about 10 KiB each).
const IDLE_RSS_LIMIT_KIB: u64 = 50 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_cost_bounded_memory_and_close_cleanly() {
    raise_fd_limit();
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, sni, kpki) = sni_cluster(tmp.path(), &["--header-timeout=15s"]).await;
    let pid = cluster.server.proc.pid().unwrap();
    let before = rss_kib(pid).unwrap();

    // Each sends the first bytes of a hello and then nothing, in batches so
    // the listen backlog never overflows.
    let partial = Arc::new(client_hello("edge-1")[..60].to_vec());
    let mut conns = Vec::with_capacity(IDLE_CONNS);
    for batch in 0..IDLE_CONNS / 250 {
        let opened = futures::future::join_all((0..250).map(|_| {
            let partial = partial.clone();
            async move {
                let mut s = TcpStream::connect(sni).await?;
                s.write_all(&partial).await?;
                Ok::<_, std::io::Error>(s)
            }
        }))
        .await;
        for s in opened {
            conns.push(s.unwrap_or_else(|e| panic!("batch {batch}: {e}")));
        }
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = rss_kib(pid).unwrap();
    eprintln!(
        "{IDLE_CONNS} idle SNI connections opened in {opened_in:?}: server RSS {before} KiB -> {during} KiB (+{} KiB)",
        during.saturating_sub(before)
    );
    assert!(
        during.saturating_sub(before) < IDLE_RSS_LIMIT_KIB,
        "RSS grew from {before} KiB to {during} KiB"
    );

    // The listener still serves real clients meanwhile.
    let ca = kpki.ca_path();
    let cacert: [&Path; 2] = [Path::new("--cacert"), &ca];
    let (code, out, err) = curl(curl_args("edge-1", sni, "/healthz", &cacert)).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "kubelet edge-1 path /healthz client anonymous\n"),
        "{err}"
    );

    // Every one is closed with an alert and a FIN (a reset would be an error).
    let closes = futures::future::join_all(conns.into_iter().map(|mut s| async move {
        let mut got = Vec::new();
        match tokio::time::timeout(Duration::from_secs(40), s.read_to_end(&mut got)).await {
            Ok(Ok(_)) if got == alert(50) => Ok(()),
            Ok(Ok(_)) => Err(format!("unexpected bytes {got:?}")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("not closed".to_string()),
        }
    }))
    .await;
    let failed: Vec<&String> = closes.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {IDLE_CONNS} not closed cleanly, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let refused = metric(
        &cluster.server,
        "tunnel_server_passthrough_refused_total{frontend=\"sni\",reason=\"timeout\"}",
    );
    assert_eq!(refused, IDLE_CONNS as f64);
    eprintln!("all closed cleanly after {:?}", started.elapsed());
}

/// The node lines of a hosts file, sorted (comments dropped).
fn hosts_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// Connected nodes according to `/agents`, sorted.
fn agent_nodes(server: &ServerProc) -> Vec<String> {
    let mut nodes: Vec<String> = server
        .agents()
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["node"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    nodes
}

/// Polls until `/agents` lists `want`, then until the hosts file does;
/// the delay between the two.
fn file_lag(server: &ServerProc, hosts: &Path, want: &[&str]) -> Duration {
    let lines = |nodes: &[&str]| -> Vec<String> {
        nodes
            .iter()
            .map(|n| format!("10.96.0.20 {n} {n}.nodes.example"))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent_nodes(server) != want {
        assert!(
            Instant::now() < deadline,
            "agents: {:?}",
            agent_nodes(server)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let registered = Instant::now();
    while hosts_lines(hosts) != lines(want) {
        assert!(
            registered.elapsed() < Duration::from_secs(5),
            "hosts file {:?}, want {want:?}",
            hosts_lines(hosts)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    registered.elapsed()
}

#[test]
fn hosts_file_lists_exactly_the_connected_nodes_within_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = integration::Pki::new(tmp.path()).unwrap();
    let hosts = tmp.path().join("dns").join("edge-nodes.hosts");
    std::fs::create_dir_all(hosts.parent().unwrap()).unwrap();
    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            args: vec![
                format!("--dns-hosts-file={}", hosts.display()),
                "--dns-address=10.96.0.20".into(),
                "--node-domain=nodes.example".into(),
            ],
            ..Default::default()
        },
    )
    .unwrap();
    let lag = file_lag(&server, &hosts, &[]);
    assert!(hosts.exists());
    let mut lags = vec![lag];
    let start = |node: &str| {
        AgentProc::start(
            &pki,
            server.agent_addr,
            node,
            &[LOCALHOST],
            AgentOptions::default(),
        )
        .unwrap()
    };
    let mut edge1 = start("edge-1");
    lags.push(file_lag(&server, &hosts, &["edge-1"]));
    let _edge2 = start("edge-2");
    lags.push(file_lag(&server, &hosts, &["edge-1", "edge-2"]));
    edge1.proc.stop(Duration::from_secs(5));
    lags.push(file_lag(&server, &hosts, &["edge-2"]));
    let _edge1 = start("edge-1");
    lags.push(file_lag(&server, &hosts, &["edge-1", "edge-2"]));
    eprintln!("hosts file followed /agents after {lags:?}");
    for lag in &lags {
        assert!(*lag < Duration::from_secs(1), "{lags:?}");
    }
    // A stopped server routes to no node: it lists none.
    server.proc.stop(Duration::from_secs(10));
    assert_eq!(hosts_lines(&hosts), Vec::<String>::new());
}
