//! A server with one agent, the setup most tests start from.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::pki::Pki;
use crate::process::{AgentOptions, AgentProc, ServerOptions, ServerProc};

/// How long fixtures wait for a process to be ready or an agent to register.
/// A bound for loaded CI machines, not an expectation: startup takes well
/// under a second (tests that assert timing measure it themselves).
pub const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub server: ServerOptions,
    /// Node name in the agent certificate.
    pub node: String,
    /// Node IPs in the agent certificate.
    pub ips: Vec<IpAddr>,
    pub agent: AgentOptions,
}

impl Default for ClusterOptions {
    /// UDS front end; agent `edge-1` at 127.0.0.1 with its default allowlist.
    fn default() -> Self {
        Self {
            server: ServerOptions {
                uds: true,
                ..Default::default()
            },
            node: "edge-1".into(),
            ips: vec![IpAddr::from([127, 0, 0, 1])],
            agent: AgentOptions::default(),
        }
    }
}

impl ClusterOptions {
    /// Default cluster whose agent may dial `allow` and gets `agent_args`.
    pub fn allowing(allow: &[String], agent_args: &[&str]) -> Self {
        let mut o = Self::default();
        o.agent.allow = allow.to_vec();
        o.agent.args = agent_args.iter().map(|s| s.to_string()).collect();
        o
    }

    /// Adds server flags.
    pub fn server_args(mut self, args: &[&str]) -> Self {
        self.server.args.extend(args.iter().map(|s| s.to_string()));
        self
    }
}

/// A running server and agent. Fields drop in declaration order: processes
/// first (their logs print if the test panicked), then the directory.
pub struct Cluster {
    pub server: ServerProc,
    pub agent: Option<AgentProc>,
    pub pki: Pki,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts both and waits until the agent is registered (panics otherwise: test fixture).
    pub fn start(opts: ClusterOptions) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(dir.path()).expect("certificates");
        let mut server = ServerProc::start(&pki, opts.server).expect("tunnel-server");
        let agent = AgentProc::start(&pki, server.agent_addr, &opts.node, &opts.ips, opts.agent)
            .expect("tunnel-agent");
        server
            .wait_agents(1, STARTUP_LIMIT)
            .expect("agent registers");
        Self {
            server,
            agent: Some(agent),
            pki,
            _dir: dir,
        }
    }

    /// The agent process (panics if a test took it out).
    pub fn agent(&self) -> &AgentProc {
        self.agent.as_ref().expect("cluster agent")
    }

    /// The Unix-socket front end.
    pub fn uds(&self) -> PathBuf {
        self.server
            .uds
            .clone()
            .expect("cluster started without --uds")
    }
}
