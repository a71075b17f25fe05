//! `tunnel-agent node-setup`: point the node's kubelet (and kube-proxy) kubeconfig at the
//! node proxy, the way operators switch kubelet to a local apiserver proxy (YurtHub).
//!
//! Only the `server:` lines of the kubeconfig's clusters change (to `http://<--hub-addr>`);
//! everything else, comments and layout included, stays byte for byte, so the change is
//! easy to read in the diff printed by the dry run (the default). `--apply` first copies the
//! file to `<file>.pre-node-setup` (refusing to overwrite an earlier backup), then replaces
//! the file atomically; `--revert` puts the backup back byte for byte and removes it.
//! Credentials stay as they are: over plain HTTP kubelet sends none, and the hub presents
//! `--hub-client-cert` (kubelet's own client certificate in the shipped manifests).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::Parser;

/// Suffix of the backup `--apply` writes next to each file.
pub const BACKUP_SUFFIX: &str = ".pre-node-setup";

/// `tunnel-agent node-setup` flags.
#[derive(Debug, Parser)]
#[command(
    name = "tunnel-agent node-setup",
    about = "Point kubelet's (and kube-proxy's) kubeconfig at the node proxy: dry run by default, --apply to write (with a backup), --revert to restore."
)]
pub struct NodeSetupArgs {
    /// Kubeconfig files to change, repeatable.
    #[arg(
        long = "kubeconfig",
        value_name = "FILE",
        default_value = "/etc/kubernetes/kubelet.conf"
    )]
    pub kubeconfigs: Vec<PathBuf>,
    /// The agent's --hub-addr: the node proxy's plain-HTTP listener.
    #[arg(long, default_value = "127.0.0.1:10261")]
    pub hub_addr: SocketAddr,
    /// Write the change (after backing each file up to FILE.pre-node-setup).
    #[arg(long, conflicts_with = "revert")]
    pub apply: bool,
    /// Restore each file from its backup, byte for byte.
    #[arg(long)]
    pub revert: bool,
}

/// Why a file was left alone.
#[derive(Debug, thiserror::Error)]
pub enum NodeSetupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a kubeconfig ({reason})")]
    NotKubeconfig { path: PathBuf, reason: String },
    #[error(
        "{path}: a cluster's server is not on a line of its own (`server: URL`); edit it by hand"
    )]
    Unrecognised { path: PathBuf },
    #[error("{backup} exists from an earlier node-setup --apply: run --revert first (or remove it if it is stale)")]
    BackupExists { backup: PathBuf },
    #[error("{backup} does not exist: nothing to revert for {path}")]
    NoBackup { path: PathBuf, backup: PathBuf },
    #[error("writing {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// One changed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineChange {
    /// 1-based line number.
    pub line: usize,
    pub old: String,
    pub new: String,
}

/// What [`plan`] would write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub new_text: String,
    pub changes: Vec<LineChange>,
}

/// Rewrites every cluster's `server:` in kubeconfig `text` to `server` (pure).
///
/// The text is parsed as YAML first (it must be `kind: Config` with clusters) and the
/// result is parsed again to prove exactly the clusters' servers changed.
pub fn plan(path: &Path, text: &str, server: &str) -> Result<Plan, NodeSetupError> {
    let before = cluster_servers(path, text)?;
    let mut changes = Vec::new();
    let mut new_text = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];
        match split_server_line(body) {
            Some((indent, value)) if value != server => {
                let new = format!("{indent}server: {server}");
                changes.push(LineChange {
                    line: i + 1,
                    old: body.to_owned(),
                    new: new.clone(),
                });
                new_text.push_str(&new);
                new_text.push_str(ending);
            }
            _ => new_text.push_str(line),
        }
    }
    let after = cluster_servers(path, &new_text)?;
    if after.len() != before.len() || after.iter().any(|s| s != server) {
        return Err(NodeSetupError::Unrecognised {
            path: path.to_path_buf(),
        });
    }
    Ok(Plan { new_text, changes })
}

/// `  server: https://x:6443` → (`  `, `https://x:6443`), quotes removed.
fn split_server_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start();
    let indent = &line[..line.len() - rest.len()];
    let value = rest.strip_prefix("server:")?.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value);
    (!value.is_empty() && !value.contains(' ')).then_some((indent, value))
}

/// The `server` of every `clusters[].cluster`.
fn cluster_servers(path: &Path, text: &str) -> Result<Vec<String>, NodeSetupError> {
    use serde_yaml_ng::Value;
    let not = |reason: String| NodeSetupError::NotKubeconfig {
        path: path.to_path_buf(),
        reason,
    };
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| not(e.to_string()))?;
    if doc.get("kind").and_then(Value::as_str) != Some("Config") {
        return Err(not("no `kind: Config`".into()));
    }
    let clusters = doc
        .get("clusters")
        .and_then(Value::as_sequence)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| not("no clusters".into()))?;
    clusters
        .iter()
        .map(|c| {
            c.get("cluster")
                .and_then(|c| c.get("server"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| not("a cluster without a server".into()))
        })
        .collect()
}

/// A unified-diff style rendering of `plan` for `path`.
pub fn render_diff(path: &Path, plan: &Plan) -> String {
    let mut out = format!("--- {p}\n+++ {p} (node-setup)\n", p = path.display());
    for c in &plan.changes {
        out.push_str(&format!(
            "@@ -{l},1 +{l},1 @@\n-{}\n+{}\n",
            c.old,
            c.new,
            l = c.line
        ));
    }
    out
}

/// The backup path of `path`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(BACKUP_SUFFIX);
    PathBuf::from(s)
}

/// Runs the subcommand; returns what to print.
pub fn run(args: &NodeSetupArgs) -> Result<String, NodeSetupError> {
    let server = format!("http://{}", args.hub_addr);
    let mut out = String::new();
    for path in &args.kubeconfigs {
        out.push_str(&if args.revert {
            revert(path)?
        } else {
            setup(path, &server, args.apply)?
        });
    }
    if args.apply || args.revert {
        out.push_str("restart the components to use it, e.g. `systemctl restart kubelet`\n");
    } else {
        out.push_str("dry run: nothing written; run again with --apply to write\n");
    }
    Ok(out)
}

fn setup(path: &Path, server: &str, apply: bool) -> Result<String, NodeSetupError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let plan = plan(path, &text, server)?;
    if plan.changes.is_empty() {
        return Ok(format!("{}: already points at {server}\n", path.display()));
    }
    let mut out = render_diff(path, &plan);
    if apply {
        let backup = backup_path(path);
        if backup.exists() {
            return Err(NodeSetupError::BackupExists { backup });
        }
        let mode = mode_of(path)?;
        write(&backup, text.as_bytes(), mode)?;
        write(path, plan.new_text.as_bytes(), mode)?;
        out.push_str(&format!(
            "wrote {} (backup: {})\n",
            path.display(),
            backup.display()
        ));
    }
    Ok(out)
}

fn revert(path: &Path) -> Result<String, NodeSetupError> {
    let backup = backup_path(path);
    let bytes = match std::fs::read(&backup) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NodeSetupError::NoBackup {
                path: path.to_path_buf(),
                backup,
            })
        }
        Err(e) => return Err(io(&backup, e)),
    };
    write(path, &bytes, mode_of(&backup)?)?;
    std::fs::remove_file(&backup).map_err(|e| io(&backup, e))?;
    Ok(format!(
        "restored {} from {}\n",
        path.display(),
        backup.display()
    ))
}

fn mode_of(path: &Path) -> Result<u32, NodeSetupError> {
    Ok(std::fs::metadata(path)
        .map_err(|e| io(path, e))?
        .permissions()
        .mode()
        & 0o7777)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), NodeSetupError> {
    certs::atomic_file::write_atomic(path, bytes, mode).map_err(|e| NodeSetupError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn io(path: &Path, source: std::io::Error) -> NodeSetupError {
    NodeSetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "http://127.0.0.1:10261";
    const KUBELET: &str = include_str!("../testdata/kubelet.conf");
    const KUBE_PROXY: &str = include_str!("../testdata/kube-proxy-kubeconfig.conf");

    #[test]
    fn only_server_lines_change() {
        let p = plan(Path::new("k"), KUBELET, HUB).unwrap();
        assert_eq!(p.changes.len(), 1);
        assert_eq!(p.changes[0].old, "    server: https://10.0.0.10:6443");
        assert_eq!(p.changes[0].new, "    server: http://127.0.0.1:10261");
        let (a, b): (Vec<_>, Vec<_>) = (KUBELET.lines().collect(), p.new_text.lines().collect());
        assert_eq!(a.len(), b.len());
        let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert_eq!(differing, 1);
        // Idempotent: a second run changes nothing.
        assert!(plan(Path::new("k"), &p.new_text, HUB)
            .unwrap()
            .changes
            .is_empty());
        let q = plan(Path::new("p"), KUBE_PROXY, HUB).unwrap();
        assert_eq!(q.changes.len(), 1);
        assert!(q.new_text.contains("tokenFile: /var/run/secrets"));
    }

    #[test]
    fn quoted_and_crlf_servers() {
        let text = "kind: Config\r\nclusters:\r\n- cluster:\r\n    server: \"https://a:6443\"\r\n  name: a\r\n";
        let p = plan(Path::new("k"), text, HUB).unwrap();
        assert_eq!(
            p.new_text,
            "kind: Config\r\nclusters:\r\n- cluster:\r\n    server: http://127.0.0.1:10261\r\n  name: a\r\n"
        );
    }

    #[test]
    fn refuses_what_it_cannot_edit_safely() {
        let err = plan(Path::new("k"), "kind: Pod\n", HUB)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a kubeconfig (no `kind: Config`)"),
            "{err}"
        );
        // Flow style: the server is not on a line of its own.
        let flow = "kind: Config\nclusters: [{name: a, cluster: {server: https://a:6443}}]\n";
        let err = plan(Path::new("k"), flow, HUB).unwrap_err().to_string();
        assert!(err.contains("not on a line of its own"), "{err}");
        let err = plan(Path::new("k"), "kind: Config\nclusters: []\n", HUB)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no clusters"), "{err}");
    }
}
