//! A fake apiserver and tunnel-servers whose controllers (`--autonomy-controller`,
//! `--approve-hub-csrs`) talk to it through `--kubeconfig` with a client certificate
//! of its CA: the setup the controllers' integration tests share.

use std::path::PathBuf;

use crate::k8s::{ApiserverPki, FakeApiserver, FakeApiserverOptions};
use crate::pki::Pki;
use crate::process::{ServerOptions, ServerProc};

/// The identity the server's kubeconfig presents (a service account would in a cluster).
pub const SERVER_USER: &str = "system:serviceaccount:edge-system:tunnel-server";

/// The fake apiserver (TLS, client certificates required) and what servers need to reach it.
pub struct ControllerEnv {
    pub api: FakeApiserver,
    /// The fake's CA, which issues the server's and the nodes' client certificates.
    pub apiserver_pki: ApiserverPki,
    /// The tunnel's own PKI (server certificate, agent CA).
    pki_dir: PathBuf,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl ControllerEnv {
    /// Starts the fake and writes the server's kubeconfig for it.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (api_dir, pki_dir) = (dir.path().join("api"), dir.path().join("pki"));
        std::fs::create_dir_all(&api_dir)?;
        std::fs::create_dir_all(&pki_dir)?;
        let apiserver_pki = ApiserverPki::generate(&api_dir)?;
        let api = FakeApiserver::start(FakeApiserverOptions {
            tls: Some(apiserver_pki.server_tls(true)),
            ..Default::default()
        })
        .await?;
        let kubeconfig = apiserver_pki.kubeconfig(&api.url(), SERVER_USER, None)?;
        Pki::new(&pki_dir)?;
        Ok(Self {
            api,
            apiserver_pki,
            pki_dir,
            kubeconfig,
            _dir: dir,
        })
    }

    /// Starts a tunnel-server with `flags` and `--kubeconfig` for the fake.
    pub async fn server(&self, flags: &[&str]) -> anyhow::Result<ServerProc> {
        let mut args: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        args.push(format!("--kubeconfig={}", self.kubeconfig.display()));
        let pki = Pki {
            dir: self.pki_dir.clone(),
        };
        tokio::task::spawn_blocking(move || {
            ServerProc::start(
                &pki,
                ServerOptions {
                    args,
                    ..Default::default()
                },
            )
        })
        .await?
    }
}
