//! Clients that dial nodes directly, against edges behind NAT (network
//! namespaces, see [`integration::netns`]):
//!
//! - a real Prometheus with static targets `edge-1:10250` and `edge-2:10250`
//!   and no `proxy_url`, whose resolver (its namespace's own `/etc/hosts`)
//!   maps the node names to the server, scrapes both kubelet stand-ins
//!   through the SNI listener (`--kubelet-addr`);
//! - in the server's namespace, an iptables (and ip6tables) `REDIRECT` of
//!   `<edge-1 IP>:10250` to `--transparent-addr` makes a plain
//!   `curl https://<edge-1 IP>:10250/healthz` reach edge-1's stand-in, for
//!   its IPv4 and its IPv6 address, while a route into a veth pair inside
//!   the namespace makes sure no packet for those IPs leaves it.
//!
//! Need root, `ip netns`, iptables and curl (and `prometheus` for the
//! first). Elsewhere they print a loud `SKIPPED` line and pass, except that
//! with `CI=true` a missing Prometheus fails.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use integration::daemon::{on_path, Daemon};
use integration::kubelet::{kubelet_on, KubeletPki};
use integration::netns::{self, in_ns, NatTopology, NsEtc};
use integration::process::{free_port, http_get, metric_value};
use integration::{AgentOptions, AgentProc, Pki, ServerOptions, ServerProc};

const KUBELET_PORT: u16 = 10250;

/// Runs an instant query; the `data.result` array.
fn query(prom: SocketAddr, q: &str) -> Vec<serde_json::Value> {
    let Ok((200, body)) = http_get(prom, &format!("/api/v1/query?query={q}")) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_kubelets_by_node_name_without_a_proxy() {
    if !on_path("prometheus") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but prometheus is not installed (apt-get install prometheus)"
        );
        eprintln!("\n!!!!!!!! SKIPPED: prometheus_scrapes_kubelets_by_node_name: prometheus not installed !!!!!!!!\n");
        return;
    }
    if netns::skip_unless_available("prometheus_scrapes_kubelets_by_node_name") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let topo = NatTopology::create().expect("NAT topology");
    let ip1 = topo.edge_ip;
    let ip2 = topo.add_edge_ip(3).expect("second edge IP");

    // Kubelet stand-ins inside the edge namespace, with their own CA.
    let kpki = KubeletPki::new(&tmp.path().join("kubelet")).unwrap();
    let (client_cert, client_key) = kpki.client("prometheus").unwrap();
    let edge = topo.edge_runtime().expect("edge namespace runtime");
    for (node, ip) in [("edge-1", ip1), ("edge-2", ip2)] {
        let tls = kpki.server_config(node, &[], &[IpAddr::V4(ip)]).unwrap();
        let addr = SocketAddr::new(IpAddr::V4(ip), KUBELET_PORT);
        edge.spawn(async move { kubelet_on(addr, node, tls).await })
            .await
            .unwrap()
            .expect("kubelet stand-in");
    }

    let pki = topo.cloud_pki(tmp.path()).expect("certificates");
    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            agent_host: Some(topo.cloud_ip.to_string()),
            args: vec![format!("--kubelet-addr={}:{KUBELET_PORT}", topo.cloud_ip)],
            ..Default::default()
        },
    )
    .expect("server");
    let mut agents = Vec::new();
    for (node, ip) in [("edge-1", ip1), ("edge-2", ip2)] {
        agents.push(
            AgentProc::start(
                &pki,
                server.agent_addr,
                node,
                &[IpAddr::V4(ip)],
                AgentOptions {
                    netns: Some(topo.edge_ns.clone()),
                    ..Default::default()
                },
            )
            .expect("agent"),
        );
    }
    server
        .wait_agents(2, Duration::from_secs(20))
        .expect("agents register through NAT");

    // Prometheus runs in the NAT namespace, whose /etc/hosts (bind-mounted
    // by `ip netns exec`) resolves the node names to the server.
    let _hosts = NsEtc::hosts(
        &topo.nat_ns,
        &format!("127.0.0.1 localhost\n{} edge-1 edge-2\n", topo.cloud_ip),
    )
    .expect("namespace hosts file");
    let prom = SocketAddr::new(IpAddr::V4(topo.nat_cloud_ip), free_port());
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: kubelets
    scheme: https
    tls_config:
      ca_file: {ca}
      cert_file: {cert}
      key_file: {key}
    static_configs:
      - targets: ["edge-1:{KUBELET_PORT}", "edge-2:{KUBELET_PORT}"]
"#,
            ca = kpki.ca_path().display(),
            cert = client_cert.display(),
            key = client_key.display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &topo.nat_ns, "prometheus"])
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom}"));
    let _prom = Daemon::spawn("prometheus", cmd, tmp.path().join("prometheus.log"));

    // Each target's own series, labelled by the stand-in with its node and
    // the client certificate it verified.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let series = query(prom, "kubelet_standin_up");
        let has = |node: &str| {
            series.iter().any(|r| {
                r["metric"]["node"] == node
                    && r["metric"]["instance"] == format!("{node}:{KUBELET_PORT}").as_str()
                    && r["metric"]["client"] == "prometheus"
            })
        };
        if has("edge-1") && has("edge-2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 60 s: {series:?}; up: {:?}\nserver log:\n{}",
            query(prom, "up"),
            server.proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "prometheus scraped edge-1 and edge-2 by name after {:?}",
        started.elapsed()
    );
    let m = server.metrics().unwrap();
    let ok = metric_value(
        &m,
        "tunnel_server_streams_total{frontend=\"sni\",result=\"ok\"}",
    );
    assert!(ok >= Some(2.0), "{m}");
    drop(agents);
    drop(edge);
}

/// `curl` inside `ns`; (exit code, stdout, stderr).
fn curl_in(ns: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-gsS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_the_transparent_listener_reaches_the_node_owning_the_ip() {
    if netns::skip_unless_available("a_redirect_to_the_transparent_listener") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let topo = NatTopology::create().expect("NAT topology");
    // The server runs in the NAT namespace ("cloud host"); agents dial it on
    // its edge-side address, the test reaches its admin port on the cloud side.
    // edge-1's node IPs are addresses only the edge namespace has. In the
    // server's namespace they are routed into a veth pair that lies wholly
    // inside it (a black hole that, unlike a `blackhole` route, still lets
    // connect() run the OUTPUT chain): without the REDIRECT nothing reaches
    // the edge, and no packet for them leaves the namespace.
    let [a, b, c, _] = topo.edge_ip.octets();
    let node_ip = Ipv4Addr::new(a, b, c, 200);
    let node_ip6: Ipv6Addr = format!("fd00:231:{c}::200").parse().unwrap();
    let (edge_ns, nat_ns) = (topo.edge_ns.as_str(), topo.nat_ns.as_str());
    let v4 = format!("{node_ip}/32");
    let v6 = format!("{node_ip6}/128");
    let local6 = format!("fd00:231:{}::2/64", topo.cloud_ip.octets()[2]);
    for cmd in [
        vec!["ip", "addr", "add", v4.as_str(), "dev", "lo"],
        vec!["ip", "-6", "addr", "add", v6.as_str(), "dev", "lo", "nodad"],
    ] {
        in_ns(edge_ns, &cmd).unwrap();
    }
    for cmd in [
        vec![
            "ip", "link", "add", "void0", "type", "veth", "peer", "name", "void1",
        ],
        vec!["ip", "link", "set", "void0", "up"],
        vec!["ip", "link", "set", "void1", "up"],
        vec![
            "ip",
            "-6",
            "addr",
            "add",
            local6.as_str(),
            "dev",
            "to-cloud",
            "nodad",
        ],
        vec!["ip", "route", "add", v4.as_str(), "dev", "void0"],
        vec!["ip", "-6", "route", "add", v6.as_str(), "dev", "void0"],
    ] {
        in_ns(nat_ns, &cmd).unwrap();
    }
    let node_ips = [IpAddr::V4(node_ip), IpAddr::V6(node_ip6)];

    certs::init_cluster(
        tmp.path(),
        "localhost",
        &[IpAddr::V4(topo.nat_edge_ip), IpAddr::V4(topo.nat_cloud_ip)],
        false,
    )
    .unwrap();
    let pki = Pki {
        dir: tmp.path().to_path_buf(),
    };
    let kpki = KubeletPki::new(&tmp.path().join("kubelet")).unwrap();
    let (client_cert, client_key) = kpki.client("metrics-server").unwrap();
    let edge = topo.edge_runtime().expect("edge namespace runtime");
    let tls = kpki.server_config("edge-1", &[], &node_ips).unwrap();
    for ip in node_ips {
        let (kubelet, tls) = (SocketAddr::new(ip, KUBELET_PORT), tls.clone());
        edge.spawn(async move { kubelet_on(kubelet, "edge-1", tls).await })
            .await
            .unwrap()
            .expect("kubelet stand-in");
    }

    let transparent_port = free_port();
    let mut server = ServerProc::start(
        &pki,
        ServerOptions {
            netns: Some(topo.nat_ns.clone()),
            agent_host: Some(topo.nat_edge_ip.to_string()),
            admin_host: Some(topo.nat_cloud_ip.to_string()),
            // Dual-stack: REDIRECT sends IPv4 to 127.0.0.1, IPv6 to ::1.
            args: vec![format!("--transparent-addr=[::]:{transparent_port}")],
            ..Default::default()
        },
    )
    .expect("server");
    let _agent = AgentProc::start(
        &pki,
        server.agent_addr,
        "edge-1",
        &node_ips,
        AgentOptions {
            netns: Some(topo.edge_ns.clone()),
            ..Default::default()
        },
    )
    .expect("agent");
    server
        .wait_agents(1, Duration::from_secs(20))
        .expect("agent registers");

    let ns = topo.nat_ns.clone();
    let ca = kpki.ca_path().display().to_string();
    let (cert, key) = (
        client_cert.display().to_string(),
        client_key.display().to_string(),
    );
    let curl = |ip: IpAddr, extra: Vec<String>| {
        let url = format!("https://{}/healthz", SocketAddr::new(ip, KUBELET_PORT));
        let (ns, ca) = (ns.clone(), ca.clone());
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["--connect-timeout", "2", "--cacert", ca.as_str()];
            args.extend(extra.iter().map(String::as_str));
            args.push(&url);
            curl_in(&ns, &args)
        })
    };
    // Without the redirect the node IPs go nowhere (curl exit 28: no answer).
    for ip in node_ips {
        let (code, _, err) = curl(ip, vec![]).await.unwrap();
        assert_eq!(code, 28, "{ip}: {err}");
    }

    let port = KUBELET_PORT.to_string();
    let to = transparent_port.to_string();
    for (tables, dst) in [("iptables", v4.as_str()), ("ip6tables", v6.as_str())] {
        let rule = [
            tables,
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-d",
            dst,
            "-p",
            "tcp",
            "--dport",
            port.as_str(),
            "-j",
            "REDIRECT",
            "--to-ports",
            to.as_str(),
        ];
        in_ns(&ns, &rule).expect("REDIRECT rule");
    }
    for ip in node_ips {
        let (code, out, err) = curl(ip, vec![]).await.unwrap();
        assert_eq!(code, 0, "{ip}: {err}\n{}", server.proc.logs());
        assert_eq!(out, "kubelet edge-1 path /healthz client anonymous\n");
        let with_cert = vec!["--cert".into(), cert.clone(), "--key".into(), key.clone()];
        let (code, out, err) = curl(ip, with_cert).await.unwrap();
        assert_eq!(code, 0, "{ip}: {err}");
        assert_eq!(out, "kubelet edge-1 path /healthz client metrics-server\n");
    }

    // Dialing the listener itself has no redirected destination: closed.
    let direct = format!("http://127.0.0.1:{transparent_port}/");
    let (code, _, _) = tokio::task::spawn_blocking(move || curl_in(&ns, &[direct.as_str()]))
        .await
        .unwrap();
    assert_ne!(code, 0);

    let m = server.metrics().unwrap();
    assert_eq!(
        metric_value(
            &m,
            "tunnel_server_streams_total{frontend=\"transparent\",result=\"ok\"}"
        ),
        Some(4.0),
        "{m}"
    );
    let refused: f64 = ["not_redirected", "no_original_dst"]
        .iter()
        .filter_map(|r| {
            metric_value(
                &m,
                &format!(
                    "tunnel_server_passthrough_refused_total{{frontend=\"transparent\",reason=\"{r}\"}}"
                ),
            )
        })
        .sum();
    assert_eq!(refused, 1.0, "{m}");
    drop(edge);
}
