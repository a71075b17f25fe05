//! Konnectivity gRPC peers that share no code with the server or with the
//! h2-based test client in [`crate::grpc`]: a grpc-go program
//! (`integration/peers/konnectivity-go`, dialing like kube-apiserver's
//! konnectivity-client) and a grpcio program
//! (`integration/peers/python/konnectivity_peer.py`).
//!
//! Both are command-line programs with the same modes and flags; each run
//! prints JSON lines on stdout, which the tests and `tunnel-bench` read.
//! The Go program is built once per target directory (GOPATH mode, offline,
//! against Debian's `golang-google-grpc-dev`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Which implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// grpc-go 1.33 from Debian, as in kube-apiserver.
    Go,
    /// grpcio (gRPC C core) from PyPI.
    Python,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Peer::Go => "Go (grpc-go)",
            Peer::Python => "Python (grpcio)",
        })
    }
}

/// Where a peer connects.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// The Unix-socket front end (`--uds`); the path is also the `:authority`.
    Uds(PathBuf),
    /// The TCP + mutual-TLS front end (`--proxy-addr`) with a client certificate.
    Tls {
        addr: std::net::SocketAddr,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Endpoint {
    fn args(&self) -> Vec<String> {
        match self {
            Endpoint::Uds(p) => vec![format!("--uds={}", p.display())],
            Endpoint::Tls {
                addr,
                ca,
                cert,
                key,
            } => vec![
                format!("--tcp={addr}"),
                format!("--ca={}", ca.display()),
                format!("--cert={}", cert.display()),
                format!("--key={}", key.display()),
            ],
        }
    }
}

/// Why a peer cannot run on this machine.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    #[error("{tool} is missing ({install})")]
    Missing {
        tool: &'static str,
        install: &'static str,
    },
    #[error("building the Go peer failed: {0}")]
    Build(String),
}

/// Debian's Go library root (GOPATH mode).
const GOCODE: &str = "/usr/share/gocode";
/// How long one peer run may take before it is killed.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("peers")
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Builds the Go peer into `out_dir` (once per process; Go's own cache,
/// kept beside it, makes later builds of unchanged sources near-instant).
fn build_go(out_dir: &Path) -> Result<PathBuf, PeerError> {
    static BUILT: OnceLock<Result<PathBuf, PeerError>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let go = on_path("go").ok_or(PeerError::Missing {
                tool: "go",
                install: "apt-get install golang-go",
            })?;
            if !Path::new(GOCODE)
                .join("src/google.golang.org/grpc")
                .is_dir()
            {
                return Err(PeerError::Missing {
                    tool: "grpc-go",
                    install: "apt-get install golang-google-grpc-dev",
                });
            }
            let out = out_dir.join("konnectivity-peer-go");
            let built = std::process::Command::new(go)
                .args(["build", "-o"])
                .arg(&out)
                .arg(".")
                .current_dir(peers_dir().join("konnectivity-go"))
                .env("GO111MODULE", "off")
                .env("GOPATH", GOCODE)
                .env("GOCACHE", out_dir.join("go-build-cache"))
                .env("GOFLAGS", "")
                .output()
                .map_err(|e| PeerError::Build(e.to_string()))?;
            if !built.status.success() {
                return Err(PeerError::Build(
                    String::from_utf8_lossy(&built.stderr).into_owned(),
                ));
            }
            Ok(out)
        })
        .clone()
}

/// A runnable peer.
#[derive(Debug, Clone)]
pub struct PeerProgram {
    pub peer: Peer,
    program: PathBuf,
    script: Option<PathBuf>,
}

impl PeerProgram {
    /// Finds (for Go: builds into `out_dir`) the peer, or says what is missing.
    pub fn locate(peer: Peer, out_dir: &Path) -> Result<Self, PeerError> {
        match peer {
            Peer::Go => Ok(Self {
                peer,
                program: build_go(out_dir)?,
                script: None,
            }),
            Peer::Python => {
                let missing = PeerError::Missing {
                    tool: "python3 with grpcio",
                    install: "pip install -r integration/peers/python/requirements.txt",
                };
                let py = on_path("python3").ok_or(missing.clone())?;
                let ok = std::process::Command::new(&py)
                    .args(["-c", "import grpc"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    return Err(missing);
                }
                Ok(Self {
                    peer,
                    program: py,
                    script: Some(peers_dir().join("python/konnectivity_peer.py")),
                })
            }
        }
    }

    /// For a test: the peer, or `None` after a skip notice when it is not
    /// installed. With `CI=true` a missing peer fails the test instead.
    pub fn for_test(peer: Peer) -> Option<Self> {
        let out_dir = crate::process::bin("tunnel-server")
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        match Self::locate(peer, &out_dir) {
            Ok(p) => Some(p),
            Err(e @ PeerError::Missing { .. }) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("the {peer} peer cannot run in CI: {e}");
                }
                eprintln!("SKIPPED: the {peer} peer cannot run here: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// The command line for `mode` against `ep` (extra `args` as `--k=v`).
    pub fn std_command(
        &self,
        ep: Option<&Endpoint>,
        mode: &str,
        args: &[String],
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.program);
        if let Some(s) = &self.script {
            cmd.arg(s);
        }
        if let Some(ep) = ep {
            cmd.args(ep.args());
        }
        cmd.arg(mode).args(args).stdin(Stdio::null());
        cmd
    }

    /// [`Self::std_command`] for tokio, killed when dropped.
    pub fn command(&self, ep: Option<&Endpoint>, mode: &str, args: &[String]) -> Command {
        let mut cmd = Command::from(self.std_command(ep, mode, args));
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs `mode` to completion and returns its last JSON line.
    pub async fn run(
        &self,
        ep: &Endpoint,
        mode: &str,
        args: &[String],
    ) -> anyhow::Result<serde_json::Value> {
        let out = tokio::time::timeout(RUN_LIMIT, self.command(Some(ep), mode, args).output())
            .await
            .with_context(|| format!("{} {mode} not done within {RUN_LIMIT:?}", self.peer))?
            .with_context(|| format!("running the {} peer", self.peer))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "{} {mode} {args:?} failed ({}):\n{stderr}{stdout}",
                self.peer,
                out.status
            );
        }
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last)
            .with_context(|| format!("{} {mode}: not JSON: {stdout:?} {stderr}", self.peer))
    }

    /// Starts `mode` with stdout piped, for modes that report events while
    /// they run (`hold`, `capture`, `forward`); see [`next_event`].
    pub fn spawn(
        &self,
        ep: Option<&Endpoint>,
        mode: &str,
        args: &[String],
    ) -> anyhow::Result<(Child, BufReader<ChildStdout>)> {
        let mut child = self
            .command(ep, mode, args)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {} peer", self.peer))?;
        let stdout = child.stdout.take().context("peer stdout")?;
        Ok((child, BufReader::new(stdout)))
    }
}

/// The next JSON line a spawned peer prints (bounded by `limit`).
pub async fn next_event(
    out: &mut BufReader<ChildStdout>,
    limit: Duration,
) -> anyhow::Result<serde_json::Value> {
    let mut line = String::new();
    let n = tokio::time::timeout(limit, out.read_line(&mut line))
        .await
        .with_context(|| format!("no output from the peer within {limit:?}"))??;
    if n == 0 {
        bail!("the peer exited without reporting");
    }
    serde_json::from_str(&line).with_context(|| format!("not JSON: {line:?}"))
}
