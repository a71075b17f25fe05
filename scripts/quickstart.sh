#!/usr/bin/env bash
# Quick start: build, create certificates, start a tunnel-server and a
# tunnel-agent on localhost, and send real traffic through the tunnel:
# curl -> tunnel-server front end (HTTP CONNECT over mutual TLS, as
# kube-apiserver would) -> QUIC tunnel -> tunnel-agent -> a TLS service
# standing in for a kubelet on 127.0.0.1:10250.
#
# Stays up until Ctrl-C when run in a terminal (so you can try things);
# otherwise it shows the traffic, cleans up and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${QUICKSTART_DIR:-$PWD/quickstart}
KUBELET_PORT=${KUBELET_PORT:-10250}
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "Building release binaries (first build takes a few minutes)"
cargo build --release --bins -q
BIN=$PWD/target/release

mkdir -p "$DIR"
cd "$DIR"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

say "Creating a CA, server, kube-apiserver client and agent certificates in $DIR"
"$BIN/tunnel-server" certs init --dir . --server-name localhost --server-ip 127.0.0.1 --force
"$BIN/tunnel-server" certs agent --dir . --node edge-1 --node-ip 127.0.0.1 --force

say "Starting a TLS stand-in for the kubelet on 127.0.0.1:$KUBELET_PORT (edge side)"
python3 - "$KUBELET_PORT" > kubelet.log 2>&1 <<'PY' &
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (b"ok\n" if self.path == "/healthz" else
                b"# HELP kubelet_running_pods Number of pods running.\nkubelet_running_pods 3\n")
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain("server.crt", "server.key")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
PY
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$KUBELET_PORT") 2>/dev/null && break; sleep 0.1; done

say "Starting tunnel-server (agents: QUIC on 127.0.0.1:8132; front end: proxy.sock and mTLS on 127.0.0.1:8131; admin: 127.0.0.1:8133)"
rm -f proxy.sock
"$BIN/tunnel-server" --agent-addr 127.0.0.1:8132 --uds "$DIR/proxy.sock" \
  --proxy-addr 127.0.0.1:8131 --proxy-client-ca proxy-client-ca.crt \
  --tls-cert server.crt --tls-key server.key --agent-ca ca.crt > server.log 2>&1 &
PIDS+=($!)

say "Starting tunnel-agent for node edge-1 (dials out to the server; admin: 127.0.0.1:8134)"
"$BIN/tunnel-agent" --server localhost:8132 --node-name edge-1 \
  --tls-cert agent-edge-1.crt --tls-key agent-edge-1.key --server-ca ca.crt \
  --allow "127.0.0.1:$KUBELET_PORT" > agent.log 2>&1 &
PIDS+=($!)

for _ in $(seq 100); do
  curl -fsS 'http://127.0.0.1:8133/readyz?agents=1' >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS 'http://127.0.0.1:8133/readyz?agents=1' || { echo "agent did not register; see $DIR/server.log and agent.log"; exit 1; }

say "Registered agents (GET http://127.0.0.1:8133/agents)"
curl -sS http://127.0.0.1:8133/agents; echo

PROXY=(--proxy https://127.0.0.1:8131 --proxy-cacert ca.crt --proxy-cert proxy-client.crt --proxy-key proxy-client.key --cacert ca.crt)
say "Through the tunnel, like kube-apiserver: curl ${PROXY[*]} https://127.0.0.1:$KUBELET_PORT/healthz"
curl -sS "${PROXY[@]}" "https://127.0.0.1:$KUBELET_PORT/healthz"
say "kubelet metrics through the tunnel"
curl -sS "${PROXY[@]}" "https://127.0.0.1:$KUBELET_PORT/metrics"
say "A destination the agent does not allow is refused (403 from the agent's allowlist)"
curl -sS "${PROXY[@]}" https://127.0.0.1:22/ 2>&1 | tail -n 1 || true
say "An agent certificate is never a front-end credential (it is not signed by proxy-client-ca.crt, and refused with 403 even if it were)"
curl -sS --proxy https://127.0.0.1:8131 --proxy-cacert ca.crt --proxy-cert agent-edge-1.crt --proxy-key agent-edge-1.key \
  --cacert ca.crt "https://127.0.0.1:$KUBELET_PORT/healthz" 2>&1 | tail -n 1 || true
say "Server metrics"
curl -sS http://127.0.0.1:8133/metrics | grep -E '^tunnel_server_(agents_connected|streams_total|bytes_total)'

cat <<EOT

The tunnel works. Try next (files and logs are in $DIR):
  curl ${PROXY[*]} https://127.0.0.1:$KUBELET_PORT/metrics
  curl http://127.0.0.1:8133/agents        # also /metrics /sd /readyz?agents=1
  curl http://127.0.0.1:8134/metrics       # the agent's metrics
  kill the agent (pkill tunnel-agent) and watch CONNECTs get 503; see docs/operations.md
  for kube-apiserver's EgressSelectorConfiguration pointing at $DIR/proxy.sock
EOT

if [ -t 1 ]; then
  say "Running; press Ctrl-C to stop"
  wait
fi
