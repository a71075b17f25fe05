//! `--hub-interface`: the real agent, as root in a fresh edge namespace,
//! puts the HTTPS listener's link-local address on the named interface (it
//! speaks rtnetlink itself: the image has no `ip`), sets it up and listens
//! there; a restarted agent finds both in place and listens again.
//!
//! Whether the kernel can create `dummy` links is asked of iproute2 first
//! (an independent netlink client): where it can, the agent must create the
//! interface; where it cannot (CI's kernel has no dummy driver), the agent
//! must say so, and an interface made beforehand (a veth here) is used.

use std::time::{Duration, Instant};

use integration::netns::{self, in_ns, NatTopology};
use integration::pki::Pki;
use integration::process::{AgentOptions, AgentProc};

const LIMIT: Duration = Duration::from_secs(15);
const IFACE: &str = "edgehub0";

fn start_agent(pki: &Pki, ns: &str, cache: &std::path::Path) -> AgentProc {
    let opts = AgentOptions {
        netns: Some(ns.to_string()),
        args: vec![
            // No server and no apiserver answer here: the hub starts anyway.
            "--apiserver=https://127.0.0.1:9".into(),
            "--hub-addr=127.0.0.1:10261".into(),
            "--hub-https-addr=169.254.2.1:10268".into(),
            format!("--hub-interface={IFACE}"),
            format!("--cache-dir={}", cache.display()),
        ],
        ..Default::default()
    };
    let ip = "10.0.0.1".parse().unwrap();
    AgentProc::start(pki, "127.0.0.1:9".parse().unwrap(), "edge-1", &[ip], opts).unwrap()
}

fn listening(ns: &str) -> bool {
    in_ns(ns, &["bash", "-c", "exec 3<>/dev/tcp/169.254.2.1/10268"]).is_ok()
}

/// Waits until a TCP connection to the listener succeeds inside `ns`.
fn wait_listening(ns: &str, agent: &AgentProc) -> Duration {
    let started = Instant::now();
    while !listening(ns) {
        assert!(
            started.elapsed() < LIMIT,
            "nothing listens on 169.254.2.1:10268 within {LIMIT:?}; agent log:\n{}",
            agent.proc.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

fn wait_log(agent: &AgentProc, needle: &str) {
    let started = Instant::now();
    while !agent.proc.logs().contains(needle) {
        assert!(
            started.elapsed() < LIMIT,
            "{needle:?} not logged; agent log:\n{}",
            agent.proc.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The kernel of `ns` can create dummy links (asked of `ip`, then undone).
fn kernel_has_dummy(ns: &str) -> bool {
    let probe = "edgeprobe0";
    let ok = in_ns(ns, &["ip", "link", "add", probe, "type", "dummy"]).is_ok();
    if ok {
        in_ns(ns, &["ip", "link", "del", probe]).unwrap();
    }
    ok
}

#[test]
fn the_agent_puts_the_listener_address_on_its_interface_and_listens_there() {
    if netns::skip_unless_available("hub_interface") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let topo = NatTopology::create().expect("namespaces");
    let pki = Pki::new(tmp.path()).unwrap();
    let ns = topo.edge_ns.as_str();
    let cache = tmp.path().join("cache");
    assert!(in_ns(ns, &["ip", "link", "show", IFACE]).is_err());

    let mut agent = start_agent(&pki, ns, &cache);
    if kernel_has_dummy(ns) {
        let took = wait_listening(ns, &agent);
        println!("the agent made a dummy {IFACE}; listening {took:?} after start");
        let link = in_ns(ns, &["ip", "-d", "-o", "link", "show", IFACE]).unwrap();
        assert!(link.contains("dummy"), "{link}");
    } else {
        wait_log(&agent, "this kernel has no `dummy` link type");
        assert!(!listening(ns), "no address, no listener");
        println!("no dummy driver here: the agent said so; using a veth made beforehand");
        agent.proc.stop(Duration::from_secs(5));
        let peer = "edgehub1";
        in_ns(
            ns,
            &[
                "ip", "link", "add", IFACE, "type", "veth", "peer", "name", peer,
            ],
        )
        .unwrap();
        agent = start_agent(&pki, ns, &cache);
        let took = wait_listening(ns, &agent);
        println!("listening on the existing {IFACE} {took:?} after start");
    }
    let addr = in_ns(ns, &["ip", "-o", "addr", "show", "dev", IFACE]).unwrap();
    assert!(addr.contains("inet 169.254.2.1/32"), "{addr}");
    let link = in_ns(ns, &["ip", "-o", "link", "show", IFACE]).unwrap();
    assert!(link.contains(",UP"), "set up: {link}");

    // Restarted: the interface and the address exist already, which is fine.
    agent.proc.stop(Duration::from_secs(5));
    let agent = start_agent(&pki, ns, &cache);
    wait_listening(ns, &agent);
    let logs = agent.proc.logs();
    assert!(
        !logs.contains("HTTPS listener address not set up"),
        "{logs}"
    );
    let addrs = in_ns(ns, &["ip", "-o", "addr", "show", "dev", IFACE]).unwrap();
    assert_eq!(addrs.matches("169.254.2.1").count(), 1, "{addrs}");
}
