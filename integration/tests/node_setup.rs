//! `tunnel-agent node-setup` on copies of the kubeconfig files kubeadm writes (kubelet's
//! `/etc/kubernetes/kubelet.conf`, kube-proxy's `kubeconfig.conf`): the dry run shows the
//! diff and writes nothing, `--apply` writes with a backup, `--revert` restores byte for byte.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use integration::process::bin;

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tunnel-agent/testdata")
        .join(name);
    std::fs::read(p).unwrap()
}

fn node_setup(files: &[&PathBuf], extra: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(bin("tunnel-agent"));
    cmd.arg("node-setup");
    for f in files {
        cmd.arg("--kubeconfig").arg(f);
    }
    let out = cmd.args(extra).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn dry_run_apply_and_revert() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = dir.path().join("kubelet.conf");
    let proxy = dir.path().join("kubeconfig.conf");
    let kubelet_orig = fixture("kubelet.conf");
    let proxy_orig = fixture("kube-proxy-kubeconfig.conf");
    std::fs::write(&kubelet, &kubelet_orig).unwrap();
    std::fs::write(&proxy, &proxy_orig).unwrap();
    std::fs::set_permissions(&kubelet, std::fs::Permissions::from_mode(0o600)).unwrap();
    let files = [&kubelet, &proxy];

    // Dry run: the diff, nothing written.
    let (ok, out, err) = node_setup(&files, &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "--- {k}\n+++ {k} (node-setup)\n@@ -5,1 +5,1 @@\n-    server: https://10.0.0.10:6443\n+    server: http://127.0.0.1:10261\n",
            k = kubelet.display()
        )),
        "{out}"
    );
    assert!(out.contains("dry run: nothing written"), "{out}");
    assert_eq!(std::fs::read(&kubelet).unwrap(), kubelet_orig);
    assert_eq!(std::fs::read(&proxy).unwrap(), proxy_orig);
    assert!(!dir.path().join("kubelet.conf.pre-node-setup").exists());

    // Apply: backups byte for byte, only the server lines changed, mode kept.
    let (ok, out, err) = node_setup(&files, &["--apply"]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote"), "{out}");
    let backup = dir.path().join("kubelet.conf.pre-node-setup");
    assert_eq!(std::fs::read(&backup).unwrap(), kubelet_orig);
    assert_eq!(
        std::fs::read(dir.path().join("kubeconfig.conf.pre-node-setup")).unwrap(),
        proxy_orig
    );
    let applied = String::from_utf8(std::fs::read(&kubelet).unwrap()).unwrap();
    let expected = String::from_utf8(kubelet_orig.clone()).unwrap().replace(
        "server: https://10.0.0.10:6443",
        "server: http://127.0.0.1:10261",
    );
    assert_eq!(applied, expected);
    let mode = std::fs::metadata(&kubelet).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&proxy)
        .unwrap()
        .contains("server: http://127.0.0.1:10261"));

    // A second apply changes nothing and keeps the original backup.
    let (ok, out, err) = node_setup(&files, &["--apply"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("already points at http://127.0.0.1:10261"),
        "{out}"
    );
    assert_eq!(std::fs::read(&backup).unwrap(), kubelet_orig);

    // Revert: the originals, byte for byte; backups gone.
    let (ok, out, err) = node_setup(&files, &["--revert"]);
    assert!(ok, "{err}");
    assert!(out.contains("restored"), "{out}");
    assert_eq!(std::fs::read(&kubelet).unwrap(), kubelet_orig);
    assert_eq!(std::fs::read(&proxy).unwrap(), proxy_orig);
    assert!(!backup.exists());
    let mode = std::fs::metadata(&kubelet).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Nothing left to revert: a clear error.
    let (ok, _, err) = node_setup(&files, &["--revert"]);
    assert!(!ok);
    assert!(err.contains("does not exist: nothing to revert"), "{err}");
}

#[test]
fn apply_refuses_to_overwrite_an_earlier_backup_and_non_kubeconfigs() {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = dir.path().join("kubelet.conf");
    std::fs::write(&kubelet, fixture("kubelet.conf")).unwrap();
    std::fs::write(dir.path().join("kubelet.conf.pre-node-setup"), b"older").unwrap();
    let (ok, _, err) = node_setup(&[&kubelet], &["--apply"]);
    assert!(!ok);
    assert!(
        err.contains("exists from an earlier node-setup --apply"),
        "{err}"
    );
    assert_eq!(std::fs::read(&kubelet).unwrap(), fixture("kubelet.conf"));

    let pod = dir.path().join("pod.yaml");
    std::fs::write(&pod, b"apiVersion: v1\nkind: Pod\n").unwrap();
    let (ok, _, err) = node_setup(&[&pod], &["--apply"]);
    assert!(!ok);
    assert!(err.contains("not a kubeconfig"), "{err}");
}
