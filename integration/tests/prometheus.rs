//! A real Prometheus scrapes real node exporters that listen only inside an
//! edge network namespace behind NAT, through the server's
//! `--http-proxy-addr` (`proxy_url`), with targets from `/sd`
//! (`http_sd_configs`): one plain-HTTP exporter (absolute-URI path) and one
//! with TLS (CONNECT path, certificate verified against the test CA).
//!
//! Needs root, `ip netns`, iptables, `prometheus` and
//! `prometheus-node-exporter` (Debian package names). Elsewhere it prints a
//! loud `SKIPPED` line and passes, except in CI (`CI=true`), where missing
//! Prometheus binaries fail the test.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::daemon::{on_path, Daemon};
use integration::netns::{self, NatTopology};
use integration::process::{free_port, http_get};
use integration::{AgentOptions, AgentProc, ServerOptions, ServerProc};

const PROMETHEUS: &str = "prometheus";
const NODE_EXPORTER: &str = "prometheus-node-exporter";
const NODE: &str = "edge-prom";

/// Why this test cannot run here (`None`: it can). In CI, missing
/// Prometheus binaries are a failure, not a skip.
fn skip_reason() -> Option<String> {
    let missing: Vec<&str> = [PROMETHEUS, NODE_EXPORTER]
        .into_iter()
        .filter(|b| !on_path(b))
        .collect();
    if !missing.is_empty() {
        let why = format!("{} not installed", missing.join(" and "));
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {why} (apt-get install prometheus prometheus-node-exporter)"
        );
        return Some(why);
    }
    netns::unavailable_reason()
}

/// Starts a node exporter inside `ns` on `addr`, with a minimal collector set.
fn node_exporter(ns: &str, addr: SocketAddr, web_config: Option<&Path>, log: PathBuf) -> Daemon {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, NODE_EXPORTER])
        .arg(format!("--web.listen-address={addr}"))
        .args([
            "--collector.disable-defaults",
            "--collector.loadavg",
            "--collector.time",
        ]);
    if let Some(c) = web_config {
        cmd.arg(format!("--web.config.file={}", c.display()));
    }
    Daemon::spawn("node exporter", cmd, log)
}

/// Runs an instant query; the `data.result` array.
fn query(prom: SocketAddr, q: &str) -> Vec<serde_json::Value> {
    let path = format!("/api/v1/query?query={q}");
    let Ok((200, body)) = http_get(prom, &path) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The value of `up` for `instance`, if Prometheus has one yet.
fn up_of(results: &[serde_json::Value], instance: &str) -> Option<String> {
    results
        .iter()
        .find(|r| r["metric"]["instance"] == instance)
        .and_then(|r| r["value"][1].as_str().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_node_exporters_behind_nat_through_the_http_proxy() {
    if let Some(why) = skip_reason() {
        eprintln!(
            "\n!!!!!!!! SKIPPED: prometheus_scrapes_node_exporters_behind_nat: needs root, ip netns, prometheus and prometheus-node-exporter ({why}) !!!!!!!!\n"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let topo = NatTopology::create().expect("NAT topology");
    let edge_ip = IpAddr::V4(topo.edge_ip);

    // Certificates: the cluster (server reachable on the cloud veth), and a
    // separate CA whose server certificate names the edge IP, for the TLS
    // exporter that Prometheus verifies.
    let pki = topo.cloud_pki(tmp.path()).expect("certificates");
    let tls_dir = tmp.path().join("edge-tls");
    std::fs::create_dir_all(&tls_dir).unwrap();
    certs::init_cluster(&tls_dir, "edge-exporter", &[edge_ip], false).unwrap();
    let web_config = tmp.path().join("web-config.yml");
    std::fs::write(
        &web_config,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            tls_dir.join("server.crt").display(),
            tls_dir.join("server.key").display()
        ),
    )
    .unwrap();

    let plain = SocketAddr::new(edge_ip, 9100);
    let tls = SocketAddr::new(edge_ip, 9101);
    let _exporter = node_exporter(&topo.edge_ns, plain, None, tmp.path().join("ne.log"));
    let _exporter_tls = node_exporter(
        &topo.edge_ns,
        tls,
        Some(&web_config),
        tmp.path().join("ne-tls.log"),
    );

    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            http_proxy: true,
            agent_host: Some(topo.cloud_ip.to_string()),
            args: vec!["--sd-port=9100".into()],
            ..Default::default()
        },
    )
    .expect("server");
    let _agent = AgentProc::start(
        &pki,
        server.agent_addr,
        NODE,
        &[edge_ip],
        AgentOptions {
            allow: vec![format!("{edge_ip}:9100-9101")],
            netns: Some(topo.edge_ns.clone()),
            ..Default::default()
        },
    )
    .expect("agent");
    server
        .wait_agents(1, Duration::from_secs(15))
        .expect("agent registers through NAT");

    let (status, sd) = http_get(server.admin_addr, "/sd").unwrap();
    assert_eq!(status, 200);
    let sd: serde_json::Value = serde_json::from_str(&sd).unwrap();
    assert_eq!(
        sd,
        serde_json::json!([{"targets": [plain.to_string()], "labels": {"node": NODE, "transport": "quic"}}])
    );

    let proxy = server.http_proxy_addr.unwrap();
    let prom_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let prom_config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: edge-nodes
    proxy_url: http://{proxy}
    http_sd_configs:
      - url: http://{admin}/sd
        refresh_interval: 1s
  - job_name: edge-tls
    scheme: https
    proxy_url: http://{proxy}
    tls_config:
      ca_file: {ca}
    static_configs:
      - targets: ["{tls}"]
        labels:
          node: {NODE}
"#,
            admin = server.admin_addr,
            ca = tls_dir.join("ca.crt").display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(PROMETHEUS);
    cmd.arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"));
    let _prom = Daemon::spawn("prometheus", cmd, tmp.path().join("prometheus.log"));

    // Scrapes every second; allow Prometheus' start-up and a few rounds.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let (up_results, took) = loop {
        let up = query(prom_addr, "up");
        let p = up_of(&up, &plain.to_string());
        let t = up_of(&up, &tls.to_string());
        if p.as_deref() == Some("1") && t.as_deref() == Some("1") {
            break (up, started.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "up after 60 s: plain {p:?}, tls {t:?}; all: {up:?}\nserver log:\n{}",
            server.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("prometheus: both targets up after {took:?}: {up_results:?}");
    let sd_target = up_results
        .iter()
        .find(|r| r["metric"]["instance"] == plain.to_string().as_str())
        .unwrap();
    assert_eq!(sd_target["metric"]["node"], NODE, "{sd_target}");
    assert_eq!(sd_target["metric"]["transport"], "quic", "{sd_target}");

    // Series from the exporters themselves, labelled with the node.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let build = query(prom_addr, "node_exporter_build_info");
        let load = query(prom_addr, "node_load1");
        let nodes: Vec<_> = build
            .iter()
            .filter(|r| r["metric"]["node"] == NODE)
            .map(|r| r["metric"]["instance"].as_str().unwrap_or("").to_string())
            .collect();
        if nodes.contains(&plain.to_string())
            && nodes.contains(&tls.to_string())
            && !load.is_empty()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node exporter series missing: build_info {build:?}, load {load:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let m = server.metrics().unwrap();
    // One tunnel stream per plain scrape, one per CONNECT (TLS) connection.
    let ok = integration::process::metric_value(
        &m,
        "tunnel_server_streams_total{frontend=\"http\",result=\"ok\"}",
    )
    .unwrap_or(0.0);
    assert!(ok >= 2.0, "{m}");
    let node_bytes = integration::process::metric_value(
        &m,
        &format!("tunnel_server_node_bytes_total{{direction=\"from_edge\",node=\"{NODE}\"}}"),
    )
    .unwrap_or(0.0);
    assert!(node_bytes > 0.0, "{m}");
    eprintln!(
        "prometheus: {} scrapes through the tunnel so far, {node_bytes} bytes from the edge",
        integration::process::metric_value(
            &m,
            "tunnel_server_streams_total{frontend=\"http\",result=\"ok\"}"
        )
        .unwrap_or(0.0)
    );
}
