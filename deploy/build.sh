#!/usr/bin/env bash
# The release build of relay-server: the one recipe the Docker image runs (deploy/Dockerfile),
# CI runs (.ci/run) and the benchmarks use (benches/compare.sh), so what CI tests is what ships.
#
#   deploy/build.sh            build target/release/relay-server and check it
#   deploy/build.sh OUT_DIR    the same, then install it as OUT_DIR/relay-server
#
# Checks, so a broken artifact fails here rather than in a container: the binary runs and
# reports its version, and it links only against libraries the runtime image
# (gcr.io/distroless/cc-debian12) has: glibc (libc, libm, libdl, libpthread, librt), the
# loader and libgcc_s. TLS is rustls on ring: no OpenSSL.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-}
bin="${CARGO_TARGET_DIR:-$root/target}/release/relay-server"

cd "$root"
# --locked: the image is built from exactly the committed Cargo.lock.
cargo build --release --locked -p relay-server --bin relay-server

version=$("$bin" --version)
case "$version" in
  "relay-server "*) echo "build.sh: $version" ;;
  *) echo "build.sh: unexpected --version output: $version" >&2; exit 1 ;;
esac

if ! command -v ldd >/dev/null 2>&1; then
  echo "build.sh: ldd not found (Debian: libc-bin); cannot check the linked libraries" >&2
  exit 1
fi
unexpected=$(ldd "$bin" | awk '{print $1}' | grep -v -E \
  '^(linux-vdso\.so\.1|/lib64/ld-linux-x86-64\.so\.2|/lib/ld-linux-aarch64\.so\.1|ld-linux[-a-z0-9_.]*\.so\.[0-9]+|lib(c|m|dl|pthread|rt)\.so\.6|libgcc_s\.so\.1)$' || true)
if [ -n "$unexpected" ]; then
  echo "build.sh: relay-server links against libraries distroless/cc does not have:" >&2
  echo "$unexpected" >&2
  exit 1
fi

if [ -n "$out" ]; then
  install -D -m 0755 "$bin" "$out/relay-server"
  echo "build.sh: installed $out/relay-server"
fi
