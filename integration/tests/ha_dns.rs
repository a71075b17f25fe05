//! Agents find replicas through DNS (issue #14): one name, one A record per
//! replica, served by a real dnsmasq inside the edge namespace and
//! re-resolved every `--server-resolve-interval`. Two agents behind NAT get
//! a connection to every replica, and CONNECT and gRPC through each replica
//! reach both nodes; a fourth replica added to the name gets every agent
//! within one interval; a removed one is dropped.
//!
//! Needs root, `ip netns`, iptables and dnsmasq (Debian `dnsmasq-base`);
//! elsewhere it prints a loud `SKIPPED` line and passes, except that with
//! `CI=true` a missing dnsmasq fails.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use integration::daemon::{on_path, Daemon};
use integration::netns::{self, NatTopology, NsEtc};
use integration::process::free_port;
use integration::replicas::{connect_echo, grpc_echo};
use integration::services::echo_server_on;
use integration::{AgentOptions, AgentProc, Pki, ServerOptions, ServerProc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const NAME: &str = "tunnel.ha.test";
const INTERVAL: Duration = Duration::from_secs(3);

/// The node names `server` lists.
fn nodes(server: &ServerProc) -> Vec<String> {
    let Ok(agents) = server.agents() else {
        return Vec::new();
    };
    let mut n: Vec<String> = agents
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["node"].as_str().map(str::to_owned))
        .collect();
    n.sort();
    n
}

/// Waits until `server` lists exactly `want`; how long it took.
fn wait_for(server: &ServerProc, want: &[&str], limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let have = nodes(server);
        if have == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} lists {have:?}, want {want:?}",
            server.agent_addr
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn hosts(ips: &[Ipv4Addr]) -> String {
    ips.iter().map(|ip| format!("{ip} {NAME}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_come_and_go_with_the_dns_name() {
    if !on_path("dnsmasq") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but dnsmasq is not installed (apt-get install dnsmasq-base)"
        );
        eprintln!("\n!!!!!!!! SKIPPED: replicas_come_and_go_with_the_dns_name: dnsmasq not installed !!!!!!!!\n");
        return;
    }
    if netns::skip_unless_available("replicas_come_and_go_with_the_dns_name") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let topo = NatTopology::create().expect("NAT topology");
    let ips: Vec<Ipv4Addr> = std::iter::once(topo.cloud_ip)
        .chain([3, 4, 5].map(|h| topo.add_cloud_ip(h).expect("cloud IP")))
        .collect();
    certs::init_cluster(tmp.path(), NAME, &[], false).unwrap();
    let pki = Pki {
        dir: tmp.path().to_path_buf(),
    };
    // Every replica on the same port, each on its own address.
    let port = free_port();
    let servers: Vec<ServerProc> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            ServerProc::start(
                &pki,
                ServerOptions {
                    agent_host: Some(ip.to_string()),
                    agent_port: Some(port),
                    // Its own socket (the fixture's name has the port, shared here).
                    args: vec![
                        format!("--server-id=r{i}"),
                        format!("--uds={}", tmp.path().join(format!("r{i}.sock")).display()),
                    ],
                    ..Default::default()
                },
            )
            .expect("replica")
        })
        .collect();

    // The edge's resolver: dnsmasq in the edge namespace, answering NAME
    // from a hosts file it reads again on SIGHUP.
    let records = tmp.path().join("replicas.hosts");
    std::fs::write(&records, hosts(&ips[..3])).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &topo.edge_ns, "dnsmasq", "--no-daemon"])
        .args([
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--local-ttl=0",
        ])
        .arg(format!("--listen-address={}", topo.edge_ip))
        .arg(format!("--addn-hosts={}", records.display()))
        .arg(format!(
            "--pid-file={}",
            tmp.path().join("dnsmasq.pid").display()
        ))
        .arg("--log-queries");
    let _dns = Daemon::spawn("dnsmasq", cmd, tmp.path().join("dnsmasq.log"));
    let _resolv = NsEtc::file(
        &topo.edge_ns,
        "resolv.conf",
        &format!(
            "nameserver {}\noptions timeout:1 attempts:2\n",
            topo.edge_ip
        ),
    )
    .unwrap();

    // Each node's echo service in the edge namespace, on the node's own IP.
    let node_ips = [topo.edge_ip, topo.add_edge_ip(3).expect("second edge IP")];
    let edge = topo.edge_runtime().expect("edge namespace runtime");
    let mut echoes = Vec::new();
    for ip in node_ips {
        let bind = format!("{ip}:0");
        echoes.push(
            edge.spawn(async move { echo_server_on(&bind).await })
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let agents: Vec<AgentProc> = ["edge-1", "edge-2"]
        .iter()
        .zip(node_ips.iter().zip(&echoes))
        .map(|(node, (ip, echo))| {
            AgentProc::start(
                &pki,
                servers[0].agent_addr,
                node,
                &[std::net::IpAddr::V4(*ip)],
                AgentOptions {
                    netns: Some(topo.edge_ns.clone()),
                    allow: vec![echo.to_string()],
                    servers: vec![format!("{NAME}:{port}")],
                    args: vec![format!("--server-resolve-interval={}s", INTERVAL.as_secs())],
                    ..Default::default()
                },
            )
            .expect("agent")
        })
        .collect();
    let both = ["edge-1", "edge-2"];
    for s in &servers[..3] {
        wait_for(s, &both, Duration::from_secs(30));
    }
    assert!(nodes(&servers[3]).is_empty(), "r3 is not in DNS yet");
    // Every replica reaches both NAT'd nodes, over CONNECT and gRPC.
    for i in 0..3 {
        let uds = tmp.path().join(format!("r{i}.sock"));
        let uds = uds.as_path();
        for echo in &echoes {
            let (status, back) = connect_echo(uds, &echo.to_string(), b"through r")
                .await
                .unwrap();
            assert_eq!(
                (status, back.as_slice()),
                (200, &b"through r"[..]),
                "r{i} -> {echo}"
            );
            let err = grpc_echo(uds, &echo.to_string(), b"grpc").await.unwrap();
            assert_eq!(err, "", "gRPC r{i} -> {echo}");
        }
    }

    // `ip netns exec` execs dnsmasq: same process.
    let dnsmasq_pid = || Pid::from_raw(_dns.pid() as i32);
    // A fourth replica joins the name.
    std::fs::write(&records, hosts(&ips)).unwrap();
    kill(dnsmasq_pid(), Signal::SIGHUP).unwrap();
    let took = wait_for(&servers[3], &both, INTERVAL * 3);
    eprintln!("added replica has every agent after {took:?} (interval {INTERVAL:?})");
    assert!(took <= INTERVAL + Duration::from_secs(2), "{took:?}");

    // The first one leaves it: the agents drop their connections to it.
    std::fs::write(&records, hosts(&ips[1..])).unwrap();
    kill(dnsmasq_pid(), Signal::SIGHUP).unwrap();
    let took = wait_for(&servers[0], &[], INTERVAL * 3);
    eprintln!("removed replica lost every agent after {took:?}");
    assert!(took <= INTERVAL + Duration::from_secs(2), "{took:?}");
    for s in &servers[1..] {
        assert_eq!(nodes(s), both, "{}", s.agent_addr);
    }
    drop(agents);
    drop(edge);
}
