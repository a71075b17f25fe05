//! Starting, waiting for, signalling and reading the logs of the binaries.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::pki::Pki;

/// Path of a workspace binary next to the running test executable (or bench binary).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> or target/<profile>/<bench> -> target/<profile>/<name>
    let mut dir = exe.parent().expect("target directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target directory");
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --bins` before the integration tests",
        p.display()
    );
    p
}

/// A loopback port free on both TCP and UDP right now.
pub fn free_port() -> u16 {
    // The kernel may hand out a port again as soon as our probe socket is
    // closed, before the process we pass it to binds it: never give the same
    // port twice in one test process (two listeners of one server collided).
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let Ok(t) = TcpListener::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = t.local_addr() else { continue };
        if UdpSocket::bind(addr).is_err() {
            continue;
        }
        let mut given = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr.port();
        }
    }
    panic!("no free port on loopback");
}

/// A child process that is killed when dropped; its output goes to a log file.
pub struct Proc {
    child: Option<Child>,
    pub log: PathBuf,
    name: String,
}

impl Proc {
    fn spawn(
        name: &str,
        bin_name: &str,
        args: &[String],
        log: PathBuf,
        netns: Option<&str>,
    ) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin(bin_name));
                c
            }
            None => Command::new(bin(bin_name)),
        };
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {bin_name}"))?;
        Ok(Self {
            child: Some(child),
            log,
            name: name.to_string(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (SIGTERM for a graceful stop, SIGKILL for a crash).
    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `limit` for a clean exit (SIGKILL after).
    pub fn stop(&mut self, limit: Duration) {
        self.signal(Signal::SIGTERM);
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + limit;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// How the process ended, once it has (`None` while it runs).
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.logs()
            );
        }
        self.kill();
    }
}

/// Options for [`ServerProc::start`].
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Serve the front end on a Unix socket in the PKI directory.
    pub uds: bool,
    /// Serve the front end on TCP+mTLS on a free loopback port.
    pub proxy: bool,
    /// Use this agent port instead of a free one (to restart on the same port).
    pub agent_port: Option<u16>,
    /// Use this admin port instead of a free one (to restart on the same port).
    pub admin_port: Option<u16>,
    /// Bind the agent listener on this address instead of 127.0.0.1.
    pub agent_host: Option<String>,
    /// Serve the plain-HTTP proxy (`--http-proxy-addr`) on a free loopback port.
    pub http_proxy: bool,
    /// Bind the admin listener on this address instead of 127.0.0.1 (a
    /// server in a namespace must be reachable from the test).
    pub admin_host: Option<String>,
    /// Run inside this network namespace.
    pub netns: Option<String>,
    /// Extra flags.
    pub args: Vec<String>,
}

/// A running tunnel-server.
pub struct ServerProc {
    pub proc: Proc,
    pub agent_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub uds: Option<PathBuf>,
    pub proxy_addr: Option<SocketAddr>,
    pub http_proxy_addr: Option<SocketAddr>,
    opts: ServerOptions,
    pki_dir: PathBuf,
}

impl ServerProc {
    /// Starts a server and waits until `/readyz` answers 200.
    pub fn start(pki: &Pki, opts: ServerOptions) -> anyhow::Result<Self> {
        let agent_port = opts.agent_port.unwrap_or_else(free_port);
        let host = opts
            .agent_host
            .clone()
            .unwrap_or_else(|| "127.0.0.1".into());
        let agent_addr: SocketAddr = format!("{host}:{agent_port}").parse()?;
        let admin_port = opts.admin_port.unwrap_or_else(free_port);
        let admin_host = opts
            .admin_host
            .clone()
            .unwrap_or_else(|| "127.0.0.1".into());
        let admin_addr: SocketAddr = format!("{admin_host}:{admin_port}").parse()?;
        let mut args = vec![
            format!("--agent-addr={agent_addr}"),
            format!("--admin-addr={admin_addr}"),
            format!("--tls-cert={}", pki.path("server.crt").display()),
            format!("--tls-key={}", pki.path("server.key").display()),
            format!("--agent-ca={}", pki.path("ca.crt").display()),
        ];
        let uds = opts
            .uds
            .then(|| pki.path(&format!("proxy-{agent_port}.sock")));
        if let Some(p) = &uds {
            args.push(format!("--uds={}", p.display()));
        }
        let proxy_addr: Option<SocketAddr> = if opts.proxy {
            Some(format!("127.0.0.1:{}", free_port()).parse()?)
        } else {
            None
        };
        if let Some(a) = proxy_addr {
            args.push(format!("--proxy-addr={a}"));
            // The front-end client CA, not the agent CA: agent certificates
            // must not chain to what --proxy-addr trusts (docs/operations.md).
            args.push(format!(
                "--proxy-client-ca={}",
                pki.path(certs::bundle::PROXY_CLIENT_CA_CERT_FILE).display()
            ));
        }
        let http_proxy_addr: Option<SocketAddr> = if opts.http_proxy {
            Some(format!("127.0.0.1:{}", free_port()).parse()?)
        } else {
            None
        };
        if let Some(a) = http_proxy_addr {
            args.push(format!("--http-proxy-addr={a}"));
        }
        args.extend(opts.args.iter().cloned());
        let log = pki.path(&format!("server-{agent_port}-{}.log", unique()));
        let proc = Proc::spawn(
            "tunnel-server",
            "tunnel-server",
            &args,
            log,
            opts.netns.as_deref(),
        )?;
        let mut s = Self {
            proc,
            agent_addr,
            admin_addr,
            uds,
            proxy_addr,
            http_proxy_addr,
            opts,
            pki_dir: pki.dir.clone(),
        };
        s.wait_ready("/readyz", crate::cluster::STARTUP_LIMIT)?;
        Ok(s)
    }

    /// Starts a new server process with the same ports and options (after a stop or kill).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let pki = Pki {
            dir: self.pki_dir.clone(),
        };
        let mut opts = self.opts.clone();
        opts.agent_port = Some(self.agent_addr.port());
        opts.admin_port = Some(self.admin_addr.port());
        let fresh = Self::start(&pki, opts)?;
        *self = fresh;
        Ok(())
    }

    /// Polls an admin path until it answers 200.
    pub fn wait_ready(&mut self, path: &str, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok((200, _)) = http_get(self.admin_addr, path) {
                return Ok(());
            }
            if !self.proc.is_running() {
                bail!("tunnel-server exited:\n{}", self.proc.logs());
            }
            if Instant::now() > deadline {
                bail!("{path} not ready within {limit:?}:\n{}", self.proc.logs());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Waits until at least `n` agents are registered.
    pub fn wait_agents(&mut self, n: usize, limit: Duration) -> anyhow::Result<()> {
        self.wait_ready(&format!("/readyz?agents={n}"), limit)
    }

    /// `/metrics` text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        Ok(http_get(self.admin_addr, "/metrics")?.1)
    }

    /// `/agents` JSON.
    pub fn agents(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &http_get(self.admin_addr, "/agents")?.1,
        )?)
    }
}

/// Options for [`AgentProc::start`].
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// `--allow` entries (empty: the agent's default).
    pub allow: Vec<String>,
    /// Claim this node name instead of the certificate's.
    pub node_name_override: Option<String>,
    /// Run inside this network namespace.
    pub netns: Option<String>,
    /// `--server` values instead of the one derived from the server address.
    pub servers: Vec<String>,
    /// Extra flags.
    pub args: Vec<String>,
}

/// A running tunnel-agent.
pub struct AgentProc {
    pub proc: Proc,
    pub node: String,
    pub admin_addr: SocketAddr,
}

impl AgentProc {
    /// Issues a certificate for `node` with `ips` and starts an agent dialing `server`.
    pub fn start(
        pki: &Pki,
        server: SocketAddr,
        node: &str,
        ips: &[std::net::IpAddr],
        opts: AgentOptions,
    ) -> anyhow::Result<Self> {
        let (cert, key) = pki.agent(node, ips)?;
        Self::start_with_files(pki, server, node, &cert, &key, opts)
    }

    /// Starts an agent for `node` with the given certificate and key paths, which need not
    /// exist yet (enrollment with `--bootstrap-token` in `opts.args` writes them).
    pub fn start_with_files(
        pki: &Pki,
        server: SocketAddr,
        node: &str,
        cert: &Path,
        key: &Path,
        opts: AgentOptions,
    ) -> anyhow::Result<Self> {
        let admin_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let server_host = if server.ip().is_loopback() {
            format!("localhost:{}", server.port())
        } else {
            server.to_string()
        };
        let servers = if opts.servers.is_empty() {
            vec![server_host]
        } else {
            opts.servers.clone()
        };
        let mut args: Vec<String> = servers.iter().map(|s| format!("--server={s}")).collect();
        args.extend([
            format!(
                "--node-name={}",
                opts.node_name_override
                    .clone()
                    .unwrap_or_else(|| node.to_string())
            ),
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
            format!("--server-ca={}", pki.path("ca.crt").display()),
            format!("--admin-addr={admin_addr}"),
        ]);
        for a in &opts.allow {
            args.push(format!("--allow={a}"));
        }
        args.extend(opts.args.iter().cloned());
        let log = pki.path(&format!("agent-{node}-{}.log", unique()));
        let proc = Proc::spawn(
            &format!("tunnel-agent {node}"),
            "tunnel-agent",
            &args,
            log,
            opts.netns.as_deref(),
        )?;
        Ok(Self {
            proc,
            node: node.to_string(),
            admin_addr,
        })
    }

    /// `/metrics` text (only for agents outside a network namespace).
    pub fn metrics(&self) -> anyhow::Result<String> {
        Ok(http_get(self.admin_addr, "/metrics")?.1)
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A blocking HTTP/1.0 GET on loopback; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status: u16 = buf
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

/// The value of a metric sample line (exact name with labels) in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// Resident memory of a process in KiB (from /proc), for memory-bound checks.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Raises this process's open-file limit to its hard limit (tests open thousands of sockets).
pub fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
