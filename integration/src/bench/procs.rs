//! The systems under test as child processes: tunnel-server + tunnel-agent,
//! sshd + `ssh -R`, and rathole server + client. Each lives in a temporary
//! directory with its keys, configs and logs, and is killed when dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::pki::Pki;
use crate::process::{free_port, http_get};

/// How long any system under test may take to come up.
const START_LIMIT: Duration = Duration::from_secs(20);

/// Directory of the workspace binaries: the one holding this executable.
///
/// `process::bin()` assumes a test executable in `target/<profile>/deps/`;
/// this binary runs from `target/<profile>/` itself, so both layouts are
/// accepted here.
pub fn workspace_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    let mut dir = exe
        .parent()
        .context("bench executable has no directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// `name` on `PATH`, in `~/.cargo/bin`, or in `/usr/sbin` (sshd).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.push("/usr/sbin".into());
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A child process, SIGTERM'd (then SIGKILL'd) and reaped on drop.
pub struct Owned {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Owned {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> anyhow::Result<Self> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            child,
            name: name.to_string(),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the log if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(st)) = self.child.try_wait() {
            bail!("{} exited ({st}):\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The last lines of the log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls a TCP connect to `addr` until it succeeds.
fn wait_listening(addr: SocketAddr, procs: &mut [&mut Owned]) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        for p in procs.iter_mut() {
            p.check_running()?;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = procs
                .iter()
                .map(|p| format!("--- {} ---\n{}", p.name, p.log_tail()))
                .collect();
            bail!(
                "{addr} not listening within {START_LIMIT:?}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// tunnel-server + one tunnel-agent (node `edge-1`, 127.0.0.1) on loopback
/// (and for the peer path a second replica in front).
pub struct Tunnel {
    pub server: Owned,
    pub agent: Owned,
    /// The replica the client talks to on the peer path.
    pub front: Option<Owned>,
    pub uds: PathBuf,
    pub proxy_addr: SocketAddr,
    pub pki: Pki,
}

impl Tunnel {
    /// Starts both processes with the harness PKI and waits until the agent
    /// is registered. The agent may dial only the `allow`ed services.
    pub fn start(
        bin_dir: &Path,
        dir: &Path,
        allow: &[SocketAddr],
        rust_log: &str,
        server_args: &[String],
        agent_args: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_with(
            bin_dir,
            dir,
            allow,
            rust_log,
            server_args,
            agent_args,
            false,
        )
    }

    /// [`Tunnel::start`], or with `via_peer` a second replica whose front
    /// ends (`uds`, `proxy_addr`) the client uses: the agent is connected to
    /// the first only, so every dial takes the peer path.
    pub fn start_with(
        bin_dir: &Path,
        dir: &Path,
        allow: &[SocketAddr],
        rust_log: &str,
        server_args: &[String],
        agent_args: &[String],
        via_peer: bool,
    ) -> anyhow::Result<Self> {
        let pki = Pki::new(dir)?;
        let (cert, key) = pki.agent("edge-1", &["127.0.0.1".parse()?])?;
        let agent_port = free_port();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let proxy_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let uds = dir.join("proxy.sock");
        let p = |n: &str| pki.path(n).display().to_string();
        let server = |agent_port: u16, admin: SocketAddr, uds: &Path, proxy: SocketAddr| {
            let mut cmd = Command::new(bin_dir.join("tunnel-server"));
            cmd.arg(format!("--agent-addr=127.0.0.1:{agent_port}"))
                .arg(format!("--admin-addr={admin}"))
                .arg(format!("--tls-cert={}", p("server.crt")))
                .arg(format!("--tls-key={}", p("server.key")))
                .arg(format!("--agent-ca={}", p("ca.crt")))
                .arg(format!("--uds={}", uds.display()))
                .arg(format!("--proxy-addr={proxy}"))
                .arg(format!("--proxy-client-ca={}", p("proxy-client-ca.crt")))
                .args(server_args)
                .env("RUST_LOG", rust_log);
            cmd
        };
        let mut cmd = server(agent_port, admin, &uds, proxy_addr);
        // The replica the client uses when the dial takes the peer path.
        let mut front = None;
        if via_peer {
            certs::issue_peer_files(dir, Duration::from_secs(24 * 3600), false)?;
            let (b_port, b_admin) = (free_port(), format!("127.0.0.1:{}", free_port()).parse()?);
            let (b_uds, b_proxy) = (
                dir.join("proxy-b.sock"),
                format!("127.0.0.1:{}", free_port()).parse()?,
            );
            let peer = |port: u16| {
                [
                    format!("--peer=127.0.0.1:{port}"),
                    format!("--peer-cert={}", p("peer.crt")),
                    format!("--peer-key={}", p("peer.key")),
                ]
            };
            cmd.args(peer(b_port));
            let mut b = server(b_port, b_admin, &b_uds, b_proxy);
            b.args(peer(agent_port));
            let b = Owned::spawn("tunnel-server (front)", b, dir.join("server-b.log"))?;
            front = Some((b, b_admin, b_uds, b_proxy));
        }
        let mut server = Owned::spawn("tunnel-server", cmd, dir.join("server.log"))?;

        let mut cmd = Command::new(bin_dir.join("tunnel-agent"));
        cmd.arg(format!("--server=localhost:{agent_port}"))
            .arg("--node-name=edge-1")
            .arg(format!("--tls-cert={}", cert.display()))
            .arg(format!("--tls-key={}", key.display()))
            .arg(format!("--server-ca={}", p("ca.crt")))
            .arg(format!("--admin-addr=127.0.0.1:{}", free_port()))
            .args(allow.iter().map(|a| format!("--allow={a}")))
            .args(agent_args)
            .env("RUST_LOG", rust_log);
        let mut agent = Owned::spawn("tunnel-agent", cmd, dir.join("agent.log"))?;

        let deadline = Instant::now() + START_LIMIT;
        let front_ready = |front: &Option<(Owned, SocketAddr, PathBuf, SocketAddr)>| {
            front
                .as_ref()
                .is_none_or(|(_, a, _, _)| matches!(http_get(*a, "/readyz"), Ok((200, _))))
        };
        while !matches!(http_get(admin, "/readyz?agents=1"), Ok((200, _))) || !front_ready(&front) {
            server.check_running()?;
            agent.check_running()?;
            if let Some((b, ..)) = front.as_mut() {
                b.check_running()?;
            }
            if Instant::now() > deadline {
                bail!(
                    "agent not registered within {START_LIMIT:?}\n--- server ---\n{}\n--- agent ---\n{}",
                    server.log_tail(),
                    agent.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let (uds, proxy_addr, front) = match front {
            Some((b, _, b_uds, b_proxy)) => (b_uds, b_proxy, Some(b)),
            None => (uds, proxy_addr, None),
        };
        Ok(Self {
            server,
            agent,
            front,
            uds,
            proxy_addr,
            pki,
        })
    }

    /// A connector presenting the proxy-client certificate, as kube-apiserver would.
    pub fn tls_connector(&self) -> anyhow::Result<tokio_rustls::TlsConnector> {
        crate::client::proxy_tls(
            &self.pki.path("ca.crt"),
            Some((
                &self.pki.path("proxy-client.crt"),
                &self.pki.path("proxy-client.key"),
            )),
        )
    }

    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.server.pid(), self.agent.pid()];
        pids.extend(self.front.as_ref().map(Owned::pid));
        pids
    }
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A throwaway sshd on loopback and an `ssh -N -R` client forwarding a
/// cloud-side port to each local service: the classic reverse tunnel.
pub struct Ssh {
    // Field order is drop order: the client goes first so sshd's session
    // process exits with its connection.
    pub client: Owned,
    pub sshd: Owned,
    /// Cloud-side listeners, in the order of the `targets` given to `start`.
    pub listeners: Vec<SocketAddr>,
    /// The cipher and MAC the two sides negotiated (from `ssh -v`).
    pub cipher: String,
}

impl Ssh {
    /// Generates host and user keys in `dir`, starts `sshd -D -f <config>`
    /// and `ssh -N -R` with OpenSSH's default algorithms (encryption on).
    pub fn start(
        dir: &Path,
        sshd_bin: &Path,
        ssh_bin: &Path,
        targets: &[SocketAddr],
    ) -> anyhow::Result<Self> {
        let keygen = find_tool("ssh-keygen").context("ssh-keygen not found")?;
        for k in ["host_key", "user_key"] {
            run(
                Command::new(&keygen)
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(dir.join(k)),
                "ssh-keygen",
            )?;
        }
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys"))?;
        // sshd refuses to start without its privilege-separation directory,
        // which the Debian package only creates when the service starts.
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let port = free_port();
        let config = format!(
            "Port {port}\n\
             ListenAddress 127.0.0.1\n\
             HostKey {dir}/host_key\n\
             PidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             StrictModes no\n\
             UsePAM no\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             PubkeyAuthentication yes\n\
             PermitRootLogin prohibit-password\n\
             AllowTcpForwarding yes\n\
             LogLevel ERROR\n",
            dir = dir.display()
        );
        let config_path = dir.join("sshd_config");
        std::fs::write(&config_path, config)?;
        let mut cmd = Command::new(sshd_bin);
        cmd.arg("-D").arg("-e").arg("-f").arg(&config_path);
        let mut sshd = Owned::spawn("sshd", cmd, dir.join("sshd.log"))?;
        let sshd_addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        wait_listening(sshd_addr, &mut [&mut sshd])?;

        let common = |c: &mut Command| {
            c.arg("-F")
                .arg("/dev/null")
                .arg("-i")
                .arg(dir.join("user_key"))
                .args(["-o", "BatchMode=yes"])
                .args(["-o", "StrictHostKeyChecking=no"])
                .args(["-o", "UserKnownHostsFile=/dev/null"])
                .args(["-o", "IdentitiesOnly=yes"])
                .arg("-p")
                .arg(port.to_string());
        };

        // A one-off verbose login records which cipher OpenSSH picks by
        // default; the forwarding client itself runs quietly so per-channel
        // debug logging does not slow it down.
        let mut probe = Command::new(ssh_bin);
        common(&mut probe);
        probe.arg("-v").arg("root@127.0.0.1").arg("true");
        let out = probe.output().context("running ssh probe")?;
        let verbose = String::from_utf8_lossy(&out.stderr);
        let cipher = verbose
            .lines()
            .find_map(|l| l.split_once("kex: server->client cipher: "))
            .map(|(_, c)| c.split(" MAC:").next().unwrap_or(c).trim().to_string())
            .with_context(|| format!("ssh probe did not log a cipher:\n{verbose}"))?;

        let listeners: Vec<SocketAddr> = targets
            .iter()
            .map(|_| format!("127.0.0.1:{}", free_port()).parse())
            .collect::<Result<_, _>>()?;
        let mut cmd = Command::new(ssh_bin);
        common(&mut cmd);
        cmd.arg("-N").args(["-o", "ExitOnForwardFailure=yes"]);
        for (l, t) in listeners.iter().zip(targets) {
            cmd.arg("-R").arg(format!("{l}:{t}"));
        }
        cmd.arg("root@127.0.0.1");
        let mut client = Owned::spawn("ssh -R", cmd, dir.join("ssh.log"))?;
        for l in &listeners {
            wait_listening(*l, &mut [&mut client, &mut sshd])?;
        }
        Ok(Self {
            client,
            sshd,
            listeners,
            cipher,
        })
    }

    /// sshd (with its per-session children) and the ssh client.
    pub fn pids(&self) -> Vec<u32> {
        vec![self.sshd.pid(), self.client.pid()]
    }
}

/// rathole server + client with the Noise transport (encrypted and
/// authenticated with a static X25519 key), one service per target.
pub struct Rathole {
    pub server: Owned,
    pub client: Owned,
    /// Cloud-side listeners, in the order of the `targets` given to `start`.
    pub listeners: Vec<SocketAddr>,
    pub version: String,
}

impl Rathole {
    pub fn start(
        dir: &Path,
        bin: &Path,
        targets: &[SocketAddr],
        rust_log: &str,
    ) -> anyhow::Result<Self> {
        let version = run(Command::new(bin).arg("--version"), "rathole --version")?
            .lines()
            .find_map(|l| l.strip_prefix("Build Version:"))
            .map_or_else(
                || "version unknown".to_string(),
                |v| format!("rathole {}", v.trim()),
            );
        // `--genkey` prints "Private Key:\n<b64>\n\nPublic Key:\n<b64>".
        let keys = run(Command::new(bin).arg("--genkey"), "rathole --genkey")?;
        let after = |label: &str| -> anyhow::Result<String> {
            let mut lines = keys.lines().skip_while(|l| !l.starts_with(label));
            lines.next();
            lines
                .find(|l| !l.trim().is_empty())
                .map(|l| l.trim().to_string())
                .with_context(|| format!("no {label} in rathole --genkey output: {keys}"))
        };
        let private = after("Private Key")?;
        let public = after("Public Key")?;

        let control = free_port();
        let listeners: Vec<SocketAddr> = targets
            .iter()
            .map(|_| format!("127.0.0.1:{}", free_port()).parse())
            .collect::<Result<_, _>>()?;
        let mut server_cfg = format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\n\
             [server.transport]\ntype = \"noise\"\n\
             [server.transport.noise]\nlocal_private_key = \"{private}\"\n"
        );
        let mut client_cfg = format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\n\
             [client.transport]\ntype = \"noise\"\n\
             [client.transport.noise]\nremote_public_key = \"{public}\"\n"
        );
        for (i, (l, t)) in listeners.iter().zip(targets).enumerate() {
            server_cfg.push_str(&format!(
                "[server.services.s{i}]\ntoken = \"bench-{i}\"\nbind_addr = \"{l}\"\n"
            ));
            client_cfg.push_str(&format!(
                "[client.services.s{i}]\ntoken = \"bench-{i}\"\nlocal_addr = \"{t}\"\n"
            ));
        }
        std::fs::write(dir.join("server.toml"), server_cfg)?;
        std::fs::write(dir.join("client.toml"), client_cfg)?;

        let mut cmd = Command::new(bin);
        cmd.arg("--server")
            .arg(dir.join("server.toml"))
            .env("RUST_LOG", rust_log);
        let mut server = Owned::spawn("rathole server", cmd, dir.join("rathole-server.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--client")
            .arg(dir.join("client.toml"))
            .env("RUST_LOG", rust_log);
        let mut client = Owned::spawn("rathole client", cmd, dir.join("rathole-client.log"))?;
        // The server opens a service's listener once the client's control
        // channel for it is up.
        for l in &listeners {
            wait_listening(*l, &mut [&mut server, &mut client])?;
        }
        Ok(Self {
            server,
            client,
            listeners,
            version,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        vec![self.server.pid(), self.client.pid()]
    }
}
