//! tunnel-server in the cloud namespace and tunnel-agent in the edge
//! namespace, the agent dialing across the emulated link.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::link::{EmulatedLink, CLOUD_IP, EDGE_IP};
use crate::bench::procs::Owned;
use crate::process::{free_port, http_get};

/// How the agent reaches the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// QUIC with the named congestion controller on both ends.
    Quic { congestion: String },
    /// WebSocket over TLS (TCP, the kernel's congestion control).
    WebSocket,
}

/// A running pair and the cloud-side addresses a client uses.
pub struct TunnelOverLink {
    pub server: Owned,
    pub agent: Owned,
    /// The CONNECT front end (a path, so reachable from any namespace).
    pub uds: PathBuf,
    /// `--forward` listener (cloud namespace, 127.0.0.1) to the edge echo.
    pub forward_echo: SocketAddr,
    /// `--http-proxy-addr` (cloud namespace, 127.0.0.1).
    pub http_proxy: SocketAddr,
}

/// Time for the agent's first registration; the link's RTT is tiny beside it.
const START_LIMIT: Duration = Duration::from_secs(30);

impl TunnelOverLink {
    /// Starts both; the agent may dial the `edge_services` (on its own
    /// address); `--forward` carries to `echo`. The calling thread must be in the cloud namespace
    /// (the readiness check talks to the server's admin port there).
    pub fn start(
        link: &EmulatedLink,
        bin_dir: &Path,
        dir: &Path,
        edge_services: &[SocketAddr],
        echo: SocketAddr,
        transport: &Transport,
        rust_log: &str,
    ) -> anyhow::Result<Self> {
        certs::init_cluster(
            dir,
            "localhost",
            &["127.0.0.1".parse()?, CLOUD_IP.into()],
            false,
        )?;
        let id = certs::NodeIdentity::new("edge-1", vec![EDGE_IP.into()])?;
        certs::issue_agent_files(dir, &id, true)?;
        let p = |n: &str| dir.join(n).display().to_string();
        let agent_port = free_port();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let forward_echo: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let http_proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let uds = dir.join("proxy.sock");

        let mut cmd = in_ns(&link.cloud_ns, &bin_dir.join("tunnel-server"));
        cmd.arg(format!("--agent-addr={CLOUD_IP}:{agent_port}"))
            .arg(format!("--admin-addr={admin}"))
            .arg(format!("--tls-cert={}", p("server.crt")))
            .arg(format!("--tls-key={}", p("server.key")))
            .arg(format!("--agent-ca={}", p("ca.crt")))
            .arg(format!("--uds={}", uds.display()))
            .arg(format!("--forward={forward_echo}=edge-1/{echo}"))
            .arg(format!("--http-proxy-addr={http_proxy}"))
            .env("RUST_LOG", rust_log);
        let mut agent_cmd = in_ns(&link.edge_ns, &bin_dir.join("tunnel-agent"));
        agent_cmd
            .arg(format!("--server={CLOUD_IP}:{agent_port}"))
            .arg("--node-name=edge-1")
            .arg(format!(
                "--tls-cert={}",
                p(&certs::bundle::agent_cert_file("edge-1"))
            ))
            .arg(format!(
                "--tls-key={}",
                p(&certs::bundle::agent_key_file("edge-1"))
            ))
            .arg(format!("--server-ca={}", p("ca.crt")))
            .arg(format!("--admin-addr=127.0.0.1:{}", free_port()))
            .args(edge_services.iter().map(|a| format!("--allow={a}")))
            .env("RUST_LOG", rust_log);
        match transport {
            Transport::Quic { congestion } => {
                cmd.arg(format!("--congestion-control={congestion}"));
                agent_cmd.arg(format!("--congestion-control={congestion}"));
            }
            Transport::WebSocket => {
                agent_cmd.arg("--transport=websocket");
            }
        }
        let mut server = Owned::spawn("tunnel-server", cmd, dir.join("server.log"))?;
        let mut agent = Owned::spawn("tunnel-agent", agent_cmd, dir.join("agent.log"))?;
        let deadline = Instant::now() + START_LIMIT;
        while !matches!(http_get(admin, "/readyz?agents=1"), Ok((200, _))) {
            server.check_running()?;
            agent.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "agent not registered across the link within {START_LIMIT:?}\n--- server ---\n{}\n--- agent ---\n{}",
                    server.log_tail(),
                    agent.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            server,
            agent,
            uds,
            forward_echo,
            http_proxy,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        vec![self.server.pid(), self.agent.pid()]
    }
}

/// `ip netns exec NS PROGRAM`: `ip` execs the program, so the child's pid is
/// the program's own (for CPU accounting and signals).
pub(crate) fn in_ns(ns: &str, program: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}
