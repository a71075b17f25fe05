//! `/agents` filtered and paged on the real server: `?node=` looks one node
//! up, `?limit=&continue=` walks the fleet in node order, bad parameters are
//! a 400 that names them.

use std::time::Duration;

use integration::process::http_get;
use integration::{AgentOptions, AgentProc, Pki, ServerOptions, ServerProc};

fn json(server: &ServerProc, path: &str) -> serde_json::Value {
    let (status, body) = http_get(server.admin_addr, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn nodes(rows: &serde_json::Value) -> Vec<&str> {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect()
}

#[test]
fn agents_can_be_looked_up_by_node_and_paged() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let mut server = ServerProc::start(&pki, ServerOptions::default()).unwrap();
    let _agents: Vec<AgentProc> = ["edge-c", "edge-a", "edge-b"]
        .iter()
        .zip(["127.0.0.4", "127.0.0.2", "127.0.0.3"])
        .map(|(node, ip)| {
            AgentProc::start(
                &pki,
                server.agent_addr,
                node,
                &[ip.parse().unwrap()],
                AgentOptions::default(),
            )
            .unwrap()
        })
        .collect();
    server.wait_agents(3, Duration::from_secs(30)).unwrap();

    assert_eq!(
        nodes(&json(&server, "/agents")),
        ["edge-a", "edge-b", "edge-c"]
    );
    let one = json(&server, "/agents?node=edge-b");
    assert_eq!(nodes(&one), ["edge-b"]);
    assert_eq!(one[0]["ips"][0], "127.0.0.3");
    assert_eq!(
        nodes(&json(&server, "/agents?node=edge-x")),
        Vec::<&str>::new()
    );

    let page = json(&server, "/agents?limit=2");
    assert_eq!(nodes(&page["items"]), ["edge-a", "edge-b"]);
    assert_eq!(page["continue"], "edge-b");
    let last = json(&server, "/agents?limit=2&continue=edge-b");
    assert_eq!(nodes(&last["items"]), ["edge-c"]);
    assert_eq!(last["continue"], "");

    let (status, body) = http_get(server.admin_addr, "/agents?limit=0").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("limit=0"), "{body}");
}
