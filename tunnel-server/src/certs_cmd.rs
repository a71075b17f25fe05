//! `tunnel-server certs ...`: create the PEM files a cluster needs.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Subcommand;

/// Certificate subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA, the server certificate and kube-apiserver's proxy client certificate.
    Init {
        /// Directory to write into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Name agents and kube-apiserver use to reach the server (a DNS SAN).
        #[arg(long)]
        server_name: String,
        /// IP addresses of the server (IP SANs), repeatable.
        #[arg(long = "server-ip")]
        server_ips: Vec<IpAddr>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create an agent certificate for one node, signed by the CA in --dir.
    Agent {
        /// Directory holding ca.crt and ca.key; the agent files are written here.
        #[arg(long)]
        dir: PathBuf,
        /// Node name (must match the Kubernetes node name).
        #[arg(long)]
        node: String,
        /// Node IPs the agent may register, repeatable.
        #[arg(long = "node-ip", required = true)]
        node_ips: Vec<IpAddr>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Runs a certs subcommand, printing the files written.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    let written = match cmd {
        CertsCommand::Init {
            dir,
            server_name,
            server_ips,
            force,
        } => certs::init_cluster(&dir, &server_name, &server_ips, force)?,
        CertsCommand::Agent {
            dir,
            node,
            node_ips,
            force,
        } => {
            let identity = certs::NodeIdentity::new(node, node_ips)?;
            certs::issue_agent_files(&dir, &identity, force)?
        }
    };
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}
