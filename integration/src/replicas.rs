//! Several tunnel-server replicas on loopback that know each other as
//! peers, and agents given some or all of them (the HA tests).

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::grpc::{close_req, data, Call, Payload};
use crate::pki::Pki;
use crate::process::{free_port, AgentOptions, AgentProc, ServerOptions, ServerProc};

/// Replicas `r0`, `r1`, ... each with `--uds`, `--server-id r<i>` and every
/// replica's agent port as `--peer` (its own included: it must skip it).
pub struct Replicas {
    pub servers: Vec<ServerProc>,
    pub pki: Pki,
    _dir: tempfile::TempDir,
}

impl Replicas {
    /// Starts `n` replicas with `extra` flags each, each with its own Unix
    /// socket and HTTP proxy (panics: test fixture).
    pub fn start(n: usize, extra: &[&str]) -> Self {
        Self::start_each(n, |_| extra.iter().map(|s| s.to_string()).collect())
    }

    /// [`Replicas::start`] with flags of their own for each replica
    /// (`extra(i)` for replica `i`), e.g. a `--forward` on one of them.
    pub fn start_each(n: usize, extra: impl Fn(usize) -> Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(dir.path()).expect("certificates");
        certs::issue_peer_files(dir.path(), Duration::from_secs(3600), false).expect("peer.crt");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peers: Vec<String> = ports
            .iter()
            .map(|p| format!("--peer=127.0.0.1:{p}"))
            .collect();
        let servers = ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let mut args = vec![
                    format!("--server-id=r{i}"),
                    format!("--peer-cert={}", pki.path("peer.crt").display()),
                    format!("--peer-key={}", pki.path("peer.key").display()),
                ];
                args.extend(peers.iter().cloned());
                args.extend(extra(i));
                ServerProc::start(
                    &pki,
                    ServerOptions {
                        uds: true,
                        http_proxy: true,
                        agent_port: Some(*port),
                        args,
                        ..Default::default()
                    },
                )
                .expect("tunnel-server replica")
            })
            .collect();
        Self {
            servers,
            pki,
            _dir: dir,
        }
    }

    /// Starts agent `node` (certificate IP `ip`, allowed to dial `allow`)
    /// given the replicas `to` as `--server` flags.
    pub fn agent(&self, node: &str, ip: IpAddr, to: &[usize], allow: &[String]) -> AgentProc {
        let mut args: Vec<String> = to[1..]
            .iter()
            .map(|i| format!("--server=localhost:{}", self.servers[*i].agent_addr.port()))
            .collect();
        args.push("--server-resolve-interval=2s".into());
        AgentProc::start(
            &self.pki,
            self.servers[to[0]].agent_addr,
            node,
            &[ip],
            AgentOptions {
                allow: allow.to_vec(),
                args,
                ..Default::default()
            },
        )
        .expect("tunnel-agent")
    }

    /// Waits until replica `i` lists every node of `nodes`.
    pub fn wait_nodes(&self, i: usize, nodes: &[&str], limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let listed = self.nodes(i);
            if nodes.iter().all(|n| listed.iter().any(|l| l == n)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("replica r{i} lists {listed:?}, not all of {nodes:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Node names replica `i`'s `/agents` lists (empty when it does not answer).
    pub fn nodes(&self, i: usize) -> Vec<String> {
        let Ok(agents) = self.servers[i].agents() else {
            return Vec::new();
        };
        agents
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| r["node"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Replica `i`'s Unix-socket front end.
    pub fn uds(&self, i: usize) -> &Path {
        self.servers[i]
            .uds
            .as_deref()
            .expect("replicas run with --uds")
    }
}

/// CONNECT to `target` through `uds`, send `payload`, half-close and read
/// everything back; returns (status, body or echoed bytes).
pub async fn connect_echo(
    uds: &Path,
    target: &str,
    payload: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let reply = crate::client::connect_uds(uds, target).await?;
    if reply.status != 200 {
        return Ok((reply.status, reply.body.into_bytes()));
    }
    let mut s = reply.stream;
    s.write_all(payload).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut back)).await??;
    Ok((200, back))
}

/// A Konnectivity gRPC dial to `target` through `uds` that echoes `payload`;
/// returns the dial error text (empty on success).
pub async fn grpc_echo(uds: &Path, target: &str, payload: &[u8]) -> anyhow::Result<String> {
    let mut call = Call::uds(uds).await?;
    let rsp = call.dial(target, 7).await?;
    if !rsp.error.is_empty() {
        return Ok(rsp.error);
    }
    let c = rsp.connect_id;
    call.tx
        .send(&data(c, Bytes::copy_from_slice(payload)))
        .await?;
    let mut got = Vec::new();
    while got.len() < payload.len() {
        match call.rx.recv().await? {
            Some(p) => match p.payload {
                Some(Payload::Data(d)) => got.extend_from_slice(&d.data),
                other => anyhow::bail!("expected DATA, got {other:?}"),
            },
            None => anyhow::bail!("call ended after {} of {} bytes", got.len(), payload.len()),
        }
    }
    anyhow::ensure!(got == payload, "echo differs");
    call.tx.send(&close_req(c)).await?;
    Ok(String::new())
}
