//! The node-proxy ("hub") test setup: a fake apiserver behind a cuttable
//! [`LinkRelay`], and a tunnel-server + tunnel-agent whose hub points at the
//! relay (`--apiserver https://127.0.0.1:<relay>`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ClusterOptions, STARTUP_LIMIT};
use crate::k8s::{ApiClient, ApiserverPki, FakeApiserver, FakeApiserverOptions, LinkRelay};
use crate::process::{free_port, metric_value, AgentOptions, AgentProc};

/// User-Agent of a cached component (the hub's default list has kubelet).
pub const KUBELET: &str = "kubelet/v1.30.0 (linux/amd64) kubernetes/abcdef";

/// The hub's HTTPS listener for pods in a test.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum HubHttps {
    /// `--hub-https-addr=off` (the tests' default: no CSR traffic, no masterservice).
    #[default]
    Off,
    /// On [`HubEnv::https_addr`], certificate through the CSR API.
    Csr,
    /// On [`HubEnv::https_addr`], with `--hub-serving-cert/-key` files issued
    /// by the fake apiserver's CA for that IP ([`HubEnv::serving_files`]).
    Files,
}

/// The IP of the HTTPS listener in tests (not the apiserver's 127.0.0.1, so a
/// certificate check cannot pass on the apiserver's SANs).
pub const HTTPS_IP: &str = "127.0.0.2";

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct HubOptions {
    /// The HTTPS listener for pods.
    pub https: HubHttps,
    /// Extra agent flags.
    pub agent_args: Vec<String>,
    /// `--cache-dir` (default: a fresh directory in the test's temp dir).
    pub cache_dir: Option<PathBuf>,
    /// The fake apiserver accepts clients without a certificate (to see bearer tokens pass).
    pub optional_client_cert: bool,
    /// `--apiserver tunnel`: the hub reaches the relay through the agent's
    /// tunnel connection and the server's `--apiserver`, not directly.
    pub via_tunnel: bool,
    /// Extra server flags.
    pub server_args: Vec<String>,
    /// The server approves the hub's serving-certificate CSRs
    /// (`--approve-hub-csrs` for [`HTTPS_IP`], with a kubeconfig for the fake).
    pub server_approves_csrs: bool,
}

/// A fake apiserver, the relay in front of it, and a cluster whose agent runs the hub.
pub struct HubEnv {
    pub cluster: Cluster,
    pub relay: LinkRelay,
    pub api: FakeApiserver,
    /// Where the hub listens.
    pub hub_addr: SocketAddr,
    /// `--hub-https-addr` (unless [`HubHttps::Off`]).
    pub https_addr: SocketAddr,
    /// `--hub-serving-cert`/`--hub-serving-key` with [`HubHttps::Files`].
    pub serving_files: Option<(PathBuf, PathBuf)>,
    /// `--cache-dir`.
    pub cache_dir: PathBuf,
    agent_args: Vec<String>,
    /// The hub's client certificate and key (issued by the fake apiserver's CA).
    client_cert: (PathBuf, PathBuf),
    apiserver_pki: ApiserverPki,
    _dir: tempfile::TempDir,
}

impl HubEnv {
    /// Starts everything and waits until the hub answers and calls the cloud reachable.
    pub async fn start(opts: HubOptions) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let apiserver_pki = ApiserverPki::generate(dir.path())?;
        let api = FakeApiserver::start(FakeApiserverOptions {
            tls: Some(apiserver_pki.server_tls(!opts.optional_client_cert)),
            ..Default::default()
        })
        .await?;
        let relay = LinkRelay::start(api.addr()).await?;
        let (cert, key) =
            apiserver_pki.client("hub-client", "system:node:edge-1", Some("system:nodes"))?;
        let cache_dir = opts
            .cache_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("cache"));
        let hub_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let mut agent_args: Vec<String> = vec![
            format!("--hub-addr={hub_addr}"),
            if opts.via_tunnel {
                "--apiserver=tunnel".to_string()
            } else {
                format!("--apiserver=https://{}", relay.addr())
            },
            format!("--hub-apiserver-ca={}", apiserver_pki.ca_cert().display()),
            format!("--hub-client-cert={}", cert.display()),
            format!("--hub-client-key={}", key.display()),
            format!("--cache-dir={}", cache_dir.display()),
        ];
        let https_addr: SocketAddr = format!("{HTTPS_IP}:{}", free_port()).parse()?;
        let mut serving_files = None;
        match opts.https {
            HubHttps::Off => agent_args.push("--hub-https-addr=off".into()),
            HubHttps::Csr => agent_args.push(format!("--hub-https-addr={https_addr}")),
            HubHttps::Files => {
                let (c, k) = apiserver_pki.serving("hub-serving", &[HTTPS_IP])?;
                agent_args.extend([
                    format!("--hub-https-addr={https_addr}"),
                    format!("--hub-serving-cert={}", c.display()),
                    format!("--hub-serving-key={}", k.display()),
                ]);
                serving_files = Some((c, k));
            }
        }
        agent_args.extend(opts.agent_args.iter().cloned());
        let mut copts = ClusterOptions::default();
        if opts.via_tunnel {
            copts = copts.server_args(&[&format!("--apiserver={}", relay.addr())]);
        }
        copts.server.args.extend(opts.server_args.iter().cloned());
        if opts.server_approves_csrs {
            let kubeconfig = apiserver_pki.kubeconfig(&api.url(), "tunnel-server", None)?;
            copts.server.args.extend([
                "--approve-hub-csrs".to_string(),
                format!("--hub-csr-ips={HTTPS_IP}"),
                format!("--kubeconfig={}", kubeconfig.display()),
            ]);
        }
        copts.agent.args = agent_args.clone();
        let cluster = tokio::task::spawn_blocking(move || Cluster::start(copts)).await?;
        let env = Self {
            cluster,
            relay,
            api,
            hub_addr,
            https_addr,
            serving_files,
            cache_dir,
            agent_args,
            client_cert: (cert, key),
            apiserver_pki,
            _dir: dir,
        };
        env.wait_hub_listening(STARTUP_LIMIT).await?;
        Ok(env)
    }

    /// A client of the hub with `user_agent`.
    pub fn client(&self, user_agent: &str) -> ApiClient {
        ApiClient::plain(self.hub_addr).with_user_agent(user_agent)
    }

    /// A client of the fake apiserver itself (not through the relay), with the hub's certificate.
    pub fn direct(&self, user_agent: &str) -> ApiClient {
        ApiClient::tls(
            self.api.addr(),
            &self.apiserver_pki.ca_cert(),
            Some((&self.client_cert.0, &self.client_cert.1)),
        )
        .expect("TLS client of the fake apiserver")
        .with_user_agent(user_agent)
    }

    /// GETs each path as kubelet through the hub and directly from the fake
    /// apiserver, asserting the same status and byte-identical bodies;
    /// returns the statuses (panics otherwise: test fixture).
    pub async fn assert_gets_match_upstream(&self, paths: &[&str]) -> Vec<u16> {
        let hub = self.kubelet();
        let direct = self.direct("oracle/1.0");
        let mut statuses = Vec::with_capacity(paths.len());
        for path in paths {
            let via_hub = hub.get(path).await.expect("GET through the hub");
            let upstream = direct.get(path).await.expect("GET from the apiserver");
            assert_eq!(via_hub.status, upstream.status, "{path}");
            assert_eq!(via_hub.body, upstream.body, "{path}: bodies differ");
            statuses.push(via_hub.status);
        }
        statuses
    }

    /// The fake apiserver's PKI (its CA plays the cluster CA).
    pub fn pki(&self) -> &ApiserverPki {
        &self.apiserver_pki
    }

    /// A pod's client of the HTTPS listener: trusts only the cluster CA,
    /// verifies the listener's IP, sends `token` as its bearer token if given.
    pub fn pod_client(&self, user_agent: &str, token: Option<&str>) -> ApiClient {
        let client = ApiClient::tls(self.https_addr, &self.apiserver_pki.ca_cert(), None)
            .and_then(|c| c.with_server_name(HTTPS_IP))
            .expect("TLS client of the HTTPS listener")
            .with_user_agent(user_agent);
        match token {
            Some(t) => client.with_bearer_token(t),
            None => client,
        }
    }

    /// The hub as kubelet.
    pub fn kubelet(&self) -> ApiClient {
        self.client(KUBELET)
    }

    /// The agent process.
    pub fn agent(&self) -> &AgentProc {
        self.cluster.agent()
    }

    /// Health probes (`GET /readyz`) the fake apiserver saw since its
    /// requests were last cleared.
    pub fn probes_seen(&self) -> usize {
        let requests = self.api.requests();
        requests
            .iter()
            .filter(|r| r.path_and_query == "/readyz")
            .count()
    }

    /// `tunnel_agent_cloud_reachable` now (None if unreadable).
    pub fn reachable(&self) -> Option<bool> {
        let m = self.agent().metrics().ok()?;
        metric_value(&m, "tunnel_agent_cloud_reachable").map(|v| v == 1.0)
    }

    /// Waits until the hub's reachability is `want`; returns how long it took.
    pub async fn wait_reachable(&self, want: bool, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if self.reachable() == Some(want) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                anyhow::bail!("cloud_reachable did not become {want} within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the hub accepts connections.
    pub async fn wait_hub_listening(&self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while tokio::net::TcpStream::connect(self.hub_addr).await.is_err() {
            if started.elapsed() > limit {
                anyhow::bail!("hub not listening on {} within {limit:?}", self.hub_addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// `kill -9` of the agent.
    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.cluster.agent.take() {
            a.proc.kill();
        }
    }

    /// Starts a new agent process with the same flags (after [`Self::kill_agent`]).
    pub async fn start_agent(&mut self) -> anyhow::Result<()> {
        let opts = AgentOptions {
            args: self.agent_args.clone(),
            ..Default::default()
        };
        let agent = AgentProc::start(
            &self.cluster.pki,
            self.cluster.server.agent_addr,
            "edge-1",
            &["127.0.0.1".parse()?],
            opts,
        )?;
        self.cluster.agent = Some(agent);
        self.wait_hub_listening(STARTUP_LIMIT).await
    }

    /// The agent's log so far.
    pub fn agent_logs(&self) -> String {
        self.agent().proc.logs()
    }

    /// The agent's resident memory in KiB.
    pub fn agent_rss_kib(&self) -> Option<u64> {
        self.agent().proc.pid().and_then(crate::process::rss_kib)
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }
}

/// A pod object as a test seeds it into the fake apiserver.
pub fn pod(
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    node: &str,
    phase: &str,
) -> serde_json::Value {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": phase},
    })
}

/// Sorted `metadata.name`s of a list response's items.
pub fn item_names(list: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Percent-encodes a query value (selectors hold `=`, `!`, `(`, `,` and spaces).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A tmpfs mounted for one test (root only); unmounted when dropped.
pub struct Tmpfs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "3m"); `None` (with the reason) when not root or mount fails.
    pub fn mount(size: &str) -> Result<Self, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("not running as root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(Self {
            path: dir.path().to_path_buf(),
            _dir: dir,
        })
    }

    /// Bytes used in the file system (from statvfs).
    pub fn used_bytes(&self) -> u64 {
        nix::sys::statvfs::statvfs(&self.path)
            .map(|s| s.blocks().saturating_sub(s.blocks_free()) * s.fragment_size())
            .unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Sends a GET on a fresh connection and reads the response to the end,
/// counting body bytes without keeping them (for huge responses).
pub async fn get_counting(
    addr: SocketAddr,
    path: &str,
    user_agent: &str,
) -> anyhow::Result<(u16, u64)> {
    get_counting_with(addr, path, user_agent, "").await
}

/// [`get_counting`] with extra header lines (each ending in `\r\n`).
pub async fn get_counting_with(
    addr: SocketAddr,
    path: &str,
    user_agent: &str,
    extra_headers: &str,
) -> anyhow::Result<(u16, u64)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {user_agent}\r\nAccept: application/json\r\n{extra_headers}Connection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut head_buf = Vec::new();
    let mut total = 0u64;
    let mut status = 0u16;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if status == 0 {
            head_buf.extend_from_slice(&buf[..n]);
            if let Some(end) = head_buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&head_buf[..end]).to_string();
                status = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                total += (head_buf.len() - end - 4) as u64;
                head_buf.clear();
            }
        } else {
            total += n as u64;
        }
    }
    Ok((status, total))
}
