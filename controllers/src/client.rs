//! The kube-rs client: from `--kubeconfig FILE`, or the pod's in-cluster configuration
//! (service-account token and CA under /var/run/secrets/kubernetes.io) when no file is given.

use std::path::{Path, PathBuf};

use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};

/// Why no client could be built; names the file or the missing in-cluster piece.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read or parsed.
    #[error("reading kubeconfig {path}: {source}")]
    ReadKubeconfig {
        path: PathBuf,
        source: KubeconfigError,
    },
    /// The kubeconfig parsed but names no usable cluster, user or context.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: KubeconfigError,
    },
    /// No `--kubeconfig` and not running in a pod with a service account.
    #[error("no --kubeconfig given and no in-cluster configuration: {0}")]
    InCluster(#[source] InClusterError),
    /// The configuration is complete but the HTTP client could not be built (TLS files).
    #[error("building the kube client{}: {source}", path.as_ref().map(|p| format!(" from {}", p.display())).unwrap_or_default())]
    Build {
        path: Option<PathBuf>,
        source: Box<kube::Error>,
    },
}

/// Reads and parses a kubeconfig file (what `check-config` checks); returns the server URL
/// of its current context.
pub fn check_kubeconfig(path: &Path) -> Result<String, ClientError> {
    let file = Kubeconfig::read_from(path).map_err(|source| ClientError::ReadKubeconfig {
        path: path.to_path_buf(),
        source,
    })?;
    let context = file.current_context.clone().unwrap_or_default();
    let cluster = file
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .unwrap_or_default();
    file.clusters
        .iter()
        .find(|c| c.name == cluster)
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or_else(|| ClientError::Kubeconfig {
            path: path.to_path_buf(),
            source: KubeconfigError::LoadContext(context),
        })
}

/// Loads the configuration and builds a client (no request is made yet).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let file =
                Kubeconfig::read_from(path).map_err(|source| ClientError::ReadKubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: path.to_path_buf(),
                    source,
                })?
        }
        None => kube::Config::incluster().map_err(ClientError::InCluster)?,
    };
    kube::Client::try_from(config).map_err(|source| ClientError::Build {
        path: kubeconfig.map(Path::to_path_buf),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_or_broken_kubeconfig_names_the_file() {
        let dir = std::env::temp_dir().join(format!("controllers-client-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let missing = dir.join("nope.conf");
        let err = client(Some(&missing)).await.err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("nope.conf")),
            "{err:?}"
        );
        let broken = dir.join("broken.conf");
        std::fs::write(&broken, "apiVersion: v1\nkind: Config\nclusters: 7\n").unwrap();
        let err = client(Some(&broken)).await.err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("broken.conf")),
            "{err:?}"
        );
        let err = check_kubeconfig(&missing).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("nope.conf")),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
