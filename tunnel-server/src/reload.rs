//! Reloading certificates and the deny list while the server runs.
//!
//! `--tls-cert`, `--tls-key` and `--agent-ca` are polled every [`TLS_POLL`] and
//! `--revocation-file` every [`REVOCATION_POLL`] (a revoked node must be cut off within
//! 2 s); SIGHUP reloads all at once. New files take effect for new handshakes through
//! [`certs::ReloadableServerCert`] and [`certs::ReloadableClientVerifier`]; established agent
//! connections are untouched, except those of a node just revoked, which are closed. A file
//! that does not load is logged (the error names it) and the previous material stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certs::{ReloadableClientVerifier, ReloadableServerCert};
use tokio::sync::Notify;

use crate::metrics::ServerMetrics;
use crate::registry::AgentRegistry;
use crate::revocation::Revocations;

/// How often the TLS files are checked for changes.
pub const TLS_POLL: Duration = Duration::from_secs(2);
/// How often the deny list is checked for changes.
pub const REVOCATION_POLL: Duration = Duration::from_millis(500);
/// How long before expiry certificates are warned about.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the expiry warning repeats while it applies.
const WARNING_REPEAT: Duration = Duration::from_secs(3600);

/// The server's own TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// `--tls-cert`.
    pub cert: PathBuf,
    /// `--tls-key`.
    pub key: PathBuf,
    /// `--agent-ca`.
    pub agent_ca: PathBuf,
}

/// The replaceable TLS material every agent-facing config is built over.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The certificate served on the agent port.
    pub cert: Arc<ReloadableServerCert>,
    /// Verifies agent certificates.
    pub agent_ca: ReloadableClientVerifier,
}

impl ServerTls {
    /// Loads the files at startup; any problem is fatal and names the file.
    pub fn load(files: &TlsFiles) -> Result<Self, certs::CertError> {
        let (chain, key) = certs::load_cert_and_key(&files.cert, &files.key)?;
        let agent_ca = ReloadableClientVerifier::new(certs::load_root_store(&files.agent_ca)?)?;
        Ok(Self {
            cert: Arc::new(ReloadableServerCert::new(chain, key)?),
            agent_ca,
        })
    }

    /// Re-reads the files; each part is replaced only if it loads completely.
    fn reload(&self, files: &TlsFiles) -> Vec<certs::CertError> {
        let mut errors = Vec::new();
        match certs::load_cert_and_key(&files.cert, &files.key)
            .and_then(|(chain, key)| self.cert.replace(chain, key))
        {
            Ok(()) => tracing::info!(cert = %files.cert.display(), "server certificate loaded"),
            Err(e) => errors.push(e),
        }
        match certs::load_root_store(&files.agent_ca).and_then(|roots| self.agent_ca.replace(roots))
        {
            Ok(()) => tracing::info!(ca = %files.agent_ca.display(), "agent CA bundle loaded"),
            Err(e) => errors.push(e),
        }
        errors
    }
}

/// What identifies a file version: modification time, length and inode.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// True when a certificate expiring at `not_after` (Unix seconds) deserves a warning at `now`.
pub fn expiry_warning_due(not_after: i64, now: i64) -> bool {
    not_after.saturating_sub(now) < EXPIRY_WARNING.as_secs() as i64
}

/// Now as Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The background task that watches the files.
pub struct Reloader {
    /// The files to watch.
    pub files: TlsFiles,
    /// Where reloaded material goes.
    pub tls: ServerTls,
    /// `--revocation-file`, if any.
    pub revocation_file: Option<PathBuf>,
    /// Where the reloaded deny list goes.
    pub revocations: Arc<Revocations>,
    /// For closing the connections of revoked nodes.
    pub registry: Arc<AgentRegistry>,
    /// For the certificate expiry gauge.
    pub metrics: ServerMetrics,
    /// Notified on SIGHUP: reload everything now.
    pub trigger: Arc<Notify>,
}

impl Reloader {
    /// Polls until the task is dropped.
    pub async fn run(self) {
        let tls_paths = [&self.files.cert, &self.files.key, &self.files.agent_ca];
        let mut tls_stamps: Vec<Stamp> = tls_paths.iter().map(|p| stamp(p)).collect();
        let mut revocation_stamp = self.revocation_file.as_deref().and_then(stamp);
        let mut tick = tokio::time::interval(REVOCATION_POLL);
        let tls_every = (TLS_POLL.as_millis() / REVOCATION_POLL.as_millis()).max(1) as u64;
        let mut ticks = 0u64;
        let mut last_warning: Option<tokio::time::Instant> = None;
        self.check_expiry(&mut last_warning);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                _ = self.trigger.notified() => true,
            };
            ticks += 1;
            if forced || ticks.is_multiple_of(tls_every) {
                let now: Vec<Stamp> = tls_paths.iter().map(|p| stamp(p)).collect();
                if forced || now != tls_stamps {
                    tls_stamps = now;
                    for e in self.tls.reload(&self.files) {
                        tracing::error!(error = %e, "certificate reload failed; keeping the previous one");
                    }
                    last_warning = None;
                }
                self.check_expiry(&mut last_warning);
            }
            if let Some(path) = &self.revocation_file {
                let now = stamp(path);
                if forced || now != revocation_stamp {
                    revocation_stamp = now;
                    self.reload_revocations(path);
                }
            }
        }
    }

    fn reload_revocations(&self, path: &Path) {
        match crate::revocation::load(path) {
            Ok(list) => {
                tracing::info!(file = %path.display(), nodes = list.len(), "revocation list loaded");
                self.revocations.replace(list);
                self.close_revoked();
            }
            Err(e) => {
                tracing::error!(error = %e, "revocation list reload failed; keeping the previous one")
            }
        }
    }

    /// Closes every connection whose certificate the deny list now revokes,
    /// including connections still draining after a transport switch.
    fn close_revoked(&self) {
        let list = self.revocations.current();
        if list.is_empty() {
            return;
        }
        for entry in self.registry.all_connections() {
            let Some(not_before) = entry
                .link
                .peer_certificates()
                .and_then(|chain| chain.first().and_then(|c| certs::not_before_unix(c).ok()))
            else {
                continue;
            };
            if let Some(at) = list.revokes(&entry.node, not_before) {
                tracing::warn!(node = %entry.node, remote = %entry.link.remote_address(), revoked_at = at,
                    "certificate revoked; closing the agent's connection");
                entry
                    .link
                    .close(proto::codes::CONN_REJECTED, "certificate revoked");
            }
        }
    }

    /// Exports the server certificate's expiry and warns (hourly) within 7 days of it.
    fn check_expiry(&self, last_warning: &mut Option<tokio::time::Instant>) {
        let Some(not_after) = self
            .tls
            .cert
            .leaf()
            .and_then(|leaf| certs::not_after_unix(&leaf).ok())
        else {
            return;
        };
        self.metrics.certificate_expiry.set(not_after);
        if expiry_warning_due(not_after, unix_now())
            && last_warning.is_none_or(|t| t.elapsed() >= WARNING_REPEAT)
        {
            *last_warning = Some(tokio::time::Instant::now());
            tracing::warn!(cert = %self.files.cert.display(), not_after,
                "the server certificate expires within 7 days; replace the file (it is reloaded automatically)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_starts_seven_days_before_expiry() {
        let week = EXPIRY_WARNING.as_secs() as i64;
        assert!(!expiry_warning_due(1_000 + week, 1_000));
        assert!(expiry_warning_due(1_000 + week - 1, 1_000));
        assert!(expiry_warning_due(0, 1_000));
    }

    #[test]
    fn stamps_change_when_a_file_is_replaced() {
        let dir = std::env::temp_dir().join(format!("reload-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        assert_eq!(stamp(&path), None);
        std::fs::write(&path, "a").unwrap();
        let first = stamp(&path);
        let tmp = dir.join("f.tmp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(stamp(&path), first);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
