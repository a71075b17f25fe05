#!/usr/bin/env bash
# Stages the image's root filesystem: the two binaries (debug info stripped),
# the shared libraries they load (from ldd, dynamic loader included), a
# passwd/group with the nonroot user, nsswitch.conf and the CA bundle (for
# --hub-apiserver-ca's default, the system trust store).
#
# usage: stage-rootfs.sh BIN_DIR OUT_DIR
set -euo pipefail
bin_dir=${1:?usage: stage-rootfs.sh BIN_DIR OUT_DIR}
out=${2:?usage: stage-rootfs.sh BIN_DIR OUT_DIR}

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/tmp"
chmod 1777 "$out/tmp"
for b in tunnel-server tunnel-agent; do
  install -m 0755 "$bin_dir/$b" "$out/usr/local/bin/$b"
  if command -v strip >/dev/null 2>&1; then strip --strip-debug "$out/usr/local/bin/$b"; fi
done

# Every library ldd resolves (absolute paths), copied to the same path.
libs=$(for b in tunnel-server tunnel-agent; do ldd "$bin_dir/$b" | grep -o ' /[^ ]*\|^[[:space:]]*/[^ ]*' | tr -d ' \t'; done | sort -u)
for lib in $libs; do
  mkdir -p "$out$(dirname "$lib")"
  cp -L "$lib" "$out$lib"
done

cat > "$out/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$out/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
echo 'hosts: files dns' > "$out/etc/nsswitch.conf"
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
fi
echo "staged $(du -sh "$out" | cut -f1) in $out: $(cd "$out" && find . -type f | sort | tr '\n' ' ')"
