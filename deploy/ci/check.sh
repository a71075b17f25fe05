#!/usr/bin/env bash
# Checks everything under deploy/ (called from .ci/run; runs alone too, as root):
#  1. the image builds (podman, FROM scratch) and its binaries run `--version`
#     from its root filesystem (podman image mount + chroot: `podman run` does
#     not work on the CI machines);
#  2. every kustomization renders (kubectl kustomize) and every object
#     validates against the Kubernetes 1.28 and 1.30 schemas in strict mode
#     (kubernetes-validate, offline); the EgressSelectorConfiguration files are
#     checked for their fields;
#  3. `check-config` passes, inside the image's root filesystem, on the
#     container args of every rendered workload and on every shipped example
#     config (with certificates from `tunnel-server certs init`), and fails
#     on a wrong node name;
#  4. `systemd-analyze verify` passes on the units.
#
# Env: BIN_DIR=dir with release tunnel-server/tunnel-agent (default: build them
# into $CARGO_TARGET_DIR/release), KEEP=1 keeps the work directory.
# kubectl, kubernetes-validate and python3 (PyYAML) are required; without podman
# (checks the staged root filesystem instead) or systemd-analyze that part is
# skipped, unless CI=true.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
k8s_versions="1.28.0 1.30.0"
image=localhost/edgetunnel:ci

work=$(mktemp -d /tmp/edgetunnel-deploy-check.XXXXXX)
mounted=""
cleanup() {
  if [ -n "$mounted" ]; then podman image unmount "$image" >/dev/null 2>&1 || true; fi
  if [ "${KEEP:-}" != 1 ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
require() { command -v "$1" >/dev/null 2>&1 || { echo "missing $1" >&2; exit 1; }; }
need() {
  if command -v "$1" >/dev/null 2>&1; then return 0; fi
  if [ "${CI:-}" = true ]; then echo "missing $1 (needed in CI)" >&2; exit 1; fi
  echo "SKIPPED: $1 not installed"; return 1
}

# --- 1. image ---------------------------------------------------------------
step "release binaries"
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release -p tunnel-server -p tunnel-agent
  BIN_DIR=${CARGO_TARGET_DIR:-$repo/target}/release
fi
"$BIN_DIR/tunnel-server" --version
"$BIN_DIR/tunnel-agent" --version

step "image: stage, build, check the binaries in its root filesystem"
deploy/image/stage-rootfs.sh "$BIN_DIR" "$work/context"
rootfs=$work/context
if need podman; then
  podman build --quiet --network=none -f deploy/image/Containerfile -t "$image" "$work/context"
  user=$(podman image inspect --format '{{.Config.User}}' "$image")
  [ "$user" = "65532:65532" ] || { echo "image runs as '$user', want 65532:65532" >&2; exit 1; }
  rootfs=$(podman image mount "$image")
  mounted=1
  echo "image $image ($(podman image inspect --format '{{.Size}}' "$image") bytes), user $user, root filesystem at $rootfs"
fi
for b in tunnel-server tunnel-agent; do
  out=$(chroot "$rootfs" "/usr/local/bin/$b" --version)
  echo "  chroot: $out"
  case "$out" in "$b "*) ;; *) echo "unexpected --version output: $out" >&2; exit 1 ;; esac
done
# A private copy: the checks below add files to it.
cp -a "$rootfs/." "$work/rootfs"
if [ -n "$mounted" ]; then podman image unmount "$image" >/dev/null; mounted=""; fi

# --- 2. manifests -------------------------------------------------------------
step "render and validate the kustomizations (Kubernetes $k8s_versions, strict)"
require kubectl
require kubernetes-validate
mkdir -p "$work/rendered"
overlays=$(cd deploy/kubernetes && find . -name kustomization.yaml -printf '%h\n' | sed 's|^\./||' | sort)
for o in $overlays; do
  out="$work/rendered/$(echo "$o" | tr / -).yaml"
  kubectl kustomize "deploy/kubernetes/$o" > "$out"
  echo "$o: $(grep -c '^kind:' "$out") objects"
  python3 deploy/ci/manifests.py split "$out" "$out.builtin"
  for v in $k8s_versions; do
    log=$(kubernetes-validate --strict --quiet -k "$v" "$out.builtin" 2>&1) || { echo "$log"; exit 1; }
    if echo "$log" | grep -q "Couldn't find schema"; then echo "$log"; exit 1; fi
  done
  echo "  valid against $k8s_versions"
done
python3 deploy/ci/manifests.py egress deploy/kubernetes/apiserver/egress-*.yaml

# --- 3. check-config ------------------------------------------------------------
step "check-config on the rendered workloads' args (inside the image root filesystem)"
server="$BIN_DIR/tunnel-server"
mkdir -p "$work/pki"
"$server" certs init --dir "$work/pki" --server-name tunnel.edge.example.net --output-format secret >/dev/null
"$server" certs agent --dir "$work/pki" --node edge-1 --node-ip 192.0.2.10 --output-format secret >/dev/null
for v in $k8s_versions; do
  kubernetes-validate --strict --quiet -k "$v" "$work/pki/secrets.yaml" "$work/pki/agent-edge-1.secret.yaml"
done
echo "  certs --output-format secret: $(grep -c '^kind: Secret' "$work/pki/secrets.yaml") + 1 Secrets valid against $k8s_versions"
# What an edge node has (hostPath volumes): kubelet's client certificate and the cluster CA.
fixture=$work/node
mkdir -p "$fixture/var/lib/kubelet/pki" "$fixture/etc/kubernetes/pki"
"$server" certs init --dir "$work/cluster-ca" --server-name kubernetes >/dev/null
cat "$work/cluster-ca/proxy-client.crt" "$work/cluster-ca/proxy-client.key" \
  > "$fixture/var/lib/kubelet/pki/kubelet-client-current.pem"
cp "$work/cluster-ca/ca.crt" "$fixture/etc/kubernetes/pki/ca.crt"
for o in $overlays; do
  f="$work/rendered/$(echo "$o" | tr / -).yaml"
  grep -qE '^kind: (Deployment|DaemonSet)$' "$f" || continue
  echo "$o:"
  python3 deploy/ci/manifests.py check-args "$f" "$work/pki/secrets.yaml" "$work/rootfs" "$fixture" "$work/args"
done

step "check-config on the shipped example configs"
ex=$work/examples
cp -a "$work/rootfs" "$ex"
cp -a "$fixture/." "$ex/"
mkdir -p "$ex/etc/edgetunnel" "$ex/var/lib/tunnel-agent/pki" "$ex/var/lib/tunnel-server/tokens"
"$server" certs init --dir "$ex/etc/edgetunnel" --server-name tunnel.example.com >/dev/null
"$server" certs agent --dir "$ex/etc/edgetunnel" --node edge-1 --node-ip 192.0.2.10 >/dev/null
mv "$ex/etc/edgetunnel/agent-edge-1.crt" "$ex/var/lib/tunnel-agent/pki/agent.crt"
mv "$ex/etc/edgetunnel/agent-edge-1.key" "$ex/var/lib/tunnel-agent/pki/agent.key"
cp deploy/examples/*.yaml "$ex/etc/edgetunnel/"
for f in deploy/examples/*.yaml; do
  name=$(basename "$f")
  case "$name" in agent*) b=tunnel-agent ;; *) b=tunnel-server ;; esac
  chroot "$ex" "/usr/local/bin/$b" check-config --config "/etc/edgetunnel/$name" | sed 's/^/  /'
done
# The check can fail: a node name the certificate does not carry.
if msg=$(chroot "$ex" /usr/local/bin/tunnel-agent check-config --config /etc/edgetunnel/agent.yaml --node-name edge-2 2>&1); then
  echo "check-config accepted a node name its certificate does not carry" >&2; exit 1
fi
echo "$msg" | grep -q 'certificate is for node "edge-1" but the agent would register as "edge-2"' \
  || { echo "unexpected message: $msg" >&2; exit 1; }
echo "  refused as expected: $(echo "$msg" | grep -m1 -o "certificate is for node.*(--node-name)")"

# --- 4. systemd ---------------------------------------------------------------------
step "systemd-analyze verify"
if need systemd-analyze; then
  # The units name /usr/local/bin/...; verify copies that point at stand-ins.
  mkdir -p "$work/systemd/bin"
  for b in tunnel-server tunnel-agent; do cp "$BIN_DIR/$b" "$work/systemd/bin/$b"; done
  for u in deploy/systemd/*.service; do
    sed "s|/usr/local/bin/|$work/systemd/bin/|g" "$u" > "$work/systemd/$(basename "$u")"
  done
  out=$(systemd-analyze verify --man=no "$work"/systemd/*.service 2>&1) || { echo "$out"; exit 1; }
  if [ -n "$out" ]; then echo "$out"; exit 1; fi
  echo "  ok: $(cd deploy/systemd && ls *.service | tr '\n' ' ')"
fi
step "deploy checks passed"
