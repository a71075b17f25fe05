//! `tunnel-server certs ...`: create the PEM files a cluster needs, bootstrap tokens, revocations.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use transport::cli::parse_duration;

use crate::certs_secret::{self, OutputFormat};

/// Certificate subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a CA, the server certificate and kube-apiserver's proxy client certificate
    /// (PEM files, or Secret manifests with --output-format secret).
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
        /// `pem` files, or `secret`: Kubernetes Secret manifests for `kubectl apply -f`.
        #[arg(long, value_enum, default_value_t = OutputFormat::Pem)]
        output_format: OutputFormat,
        /// Namespace of the Secrets (with --output-format secret).
        #[arg(long, default_value = "edgetunnel")]
        namespace: String,
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
        /// Lifetime of the certificate.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        ttl: Duration,
        /// `pem` files, or `secret`: Kubernetes Secret manifests for `kubectl apply -f`.
        #[arg(long, value_enum, default_value_t = OutputFormat::Pem)]
        output_format: OutputFormat,
        /// Namespace of the Secrets (with --output-format secret).
        #[arg(long, default_value = "edgetunnel")]
        namespace: String,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Create the peer certificate replicas show each other (peer.crt, peer.key;
    /// the server's --peer-cert / --peer-key), signed by the CA in --dir.
    Peer {
        /// Directory holding ca.crt and ca.key; peer.crt and peer.key are written here.
        #[arg(long)]
        dir: PathBuf,
        /// Lifetime of the certificate.
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        ttl: Duration,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Bootstrap tokens for enrolling nodes without copying certificates to them.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Revoke a node: the server closes its connection and refuses its current certificates.
    Revoke {
        /// The deny list the server reads (its --revocation-file); created if missing.
        #[arg(long)]
        revocation_file: PathBuf,
        /// Node name to revoke.
        #[arg(long)]
        node: String,
    },
}

/// `certs token ...` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a single-use token for one node; prints the token on its last line.
    Create {
        /// Certificate directory (default for --token-dir: DIR/tokens).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The server's --token-dir, where the token's hash is stored.
        #[arg(long)]
        token_dir: Option<PathBuf>,
        /// Node name the token enrolls.
        #[arg(long)]
        node: String,
        /// Node IPs the enrolled certificate carries, repeatable.
        #[arg(long = "node-ip", required = true)]
        node_ips: Vec<IpAddr>,
        /// How long the token may be used.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
    },
}

/// Runs a certs subcommand, printing the files written (or the token, on the last line).
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    let written = match cmd {
        CertsCommand::Init {
            dir,
            server_name,
            server_ips,
            output_format: OutputFormat::Pem,
            force,
            ..
        } => certs::init_cluster(&dir, &server_name, &server_ips, force)?,
        CertsCommand::Init {
            dir,
            server_name,
            server_ips,
            output_format: OutputFormat::Secret,
            namespace,
            force,
        } => certs_secret::init(&dir, &server_name, &server_ips, &namespace, force)?,
        CertsCommand::Peer { dir, ttl, force } => certs::issue_peer_files(&dir, ttl, force)?,
        CertsCommand::Agent {
            dir,
            node,
            node_ips,
            ttl,
            output_format,
            namespace,
            force,
        } => {
            let identity = certs::NodeIdentity::new(node, node_ips)?;
            match output_format {
                OutputFormat::Pem => {
                    certs::issue_agent_files_valid_for(&dir, &identity, ttl, force)?
                }
                OutputFormat::Secret => {
                    certs_secret::agent(&dir, &identity, ttl, &namespace, force)?
                }
            }
        }
        CertsCommand::Token(TokenCommand::Create {
            dir,
            token_dir,
            node,
            node_ips,
            ttl,
        }) => return create_token(dir, token_dir, node, node_ips, ttl),
        CertsCommand::Revoke {
            revocation_file,
            node,
        } => {
            crate::revocation::append(&revocation_file, &node, crate::reload::unix_now())?;
            println!(
                "revoked node {node} in {} (servers reading it disconnect the node within seconds)",
                revocation_file.display()
            );
            return Ok(());
        }
    };
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}

/// `certs token create`: stores the token's hash and prints the token last.
fn create_token(
    dir: Option<PathBuf>,
    token_dir: Option<PathBuf>,
    node: String,
    node_ips: Vec<IpAddr>,
    ttl: Duration,
) -> anyhow::Result<()> {
    let token_dir = token_dir
        .or_else(|| dir.map(|d| d.join("tokens")))
        .context("--token-dir (or --dir) is required")?;
    let identity = certs::NodeIdentity::new(node, node_ips)?;
    let token = certs::BootstrapToken::generate()?;
    let ttl_secs = i64::try_from(ttl.as_secs()).context("--ttl is too long")?;
    let record = certs::TokenRecord {
        id: token.id().to_owned(),
        secret_sha256: token.secret_sha256(),
        node: identity.node_name,
        ips: identity.node_ips,
        expires_unix: crate::reload::unix_now().saturating_add(ttl_secs),
    };
    let path = certs::TokenStore::new(&token_dir).create(&record)?;
    println!(
        "wrote {} (node {}, expires at unix time {})",
        path.display(),
        record.node,
        record.expires_unix
    );
    println!("{token}");
    Ok(())
}
