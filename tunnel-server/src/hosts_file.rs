//! `--dns-hosts-file`: the connected nodes as a hosts file, for CoreDNS's
//! `hosts` plugin, so `<node>` (and `<node>.<node-domain>`) resolve to the
//! SNI listener (`--dns-address`) while the node's agent is connected.
//!
//! The file is rewritten atomically (temporary file and rename, so CoreDNS
//! never reads half of it) shortly after every registry change; a burst of
//! connects is written once. It always lists exactly the connected nodes,
//! and none once the server has stopped.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::registry::AgentRegistry;

/// Changes closer together than this are written in one go.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// What to write where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    pub path: PathBuf,
    /// The address every node name resolves to (`--dns-address`).
    pub address: IpAddr,
    /// Also list `<node>.<domain>` (`--node-domain`).
    pub node_domain: Option<String>,
}

/// The file's text for `nodes` (sorted by the caller): one
/// `ADDRESS NAME [NAME.DOMAIN]` line per node.
pub fn render(nodes: &[String], address: IpAddr, node_domain: Option<&str>) -> String {
    let mut out = String::from(
        "# Written by tunnel-server (--dns-hosts-file): nodes whose agent is connected.\n",
    );
    for node in nodes {
        out.push_str(&format!("{address} {node}"));
        if let Some(d) = node_domain {
            out.push_str(&format!(" {node}.{d}"));
        }
        out.push('\n');
    }
    out
}

impl HostsFile {
    /// Writes the file without any node (the server is stopping).
    pub fn clear(&self) {
        let text = render(&[], self.address, self.node_domain.as_deref());
        if let Err(e) = certs::atomic_file::write_atomic(&self.path, text.as_bytes(), 0o644) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot clear --dns-hosts-file");
        }
    }

    /// Writes the file now and after every change of `registry`, until the
    /// task is dropped. A failed write is logged and retried at the next change
    /// or after a second.
    pub async fn run(self, registry: Arc<AgentRegistry>) {
        let mut changes = registry.changes();
        let mut written: Option<String> = None;
        loop {
            let _ = changes.borrow_and_update();
            let text = render(&registry.nodes(), self.address, self.node_domain.as_deref());
            let mut retry = false;
            if written.as_ref() != Some(&text) {
                match certs::atomic_file::write_atomic(&self.path, text.as_bytes(), 0o644) {
                    Ok(()) => {
                        tracing::debug!(path = %self.path.display(),
                            nodes = text.lines().count() - 1, "hosts file written");
                        written = Some(text);
                    }
                    Err(e) => {
                        tracing::warn!(path = %self.path.display(), error = %e,
                            "cannot write --dns-hosts-file");
                        retry = true;
                    }
                }
            }
            if retry {
                let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
            } else if changes.changed().await.is_err() {
                return;
            }
            tokio::time::sleep(DEBOUNCE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_node_with_the_domain_name_beside_it() {
        let nodes = vec!["edge-1".to_string(), "edge-2".to_string()];
        let ip: IpAddr = "10.96.0.20".parse().unwrap();
        let text = render(&nodes, ip, Some("nodes.example"));
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "10.96.0.20 edge-1 edge-1.nodes.example",
                "10.96.0.20 edge-2 edge-2.nodes.example"
            ]
        );
        let text = render(&nodes[..1], "fd00::20".parse().unwrap(), None);
        assert!(text.ends_with("\nfd00::20 edge-1\n"), "{text}");
        assert_eq!(render(&[], ip, None).lines().count(), 1);
    }
}
