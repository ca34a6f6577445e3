#!/usr/bin/env bash
# Checks the Dockerfile's build stage without a Docker engine: copies exactly
# what its COPY lines bring into the build context to a scratch directory and
# type-checks the binary there, so a file the build needs but the Dockerfile
# forgets (a target named in Cargo.toml, say) fails here instead of in
# `docker build`. Also checks that the runtime stage copies the libraries the
# binary links besides glibc, libgcc and OpenSSL (which distroless/cc has).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dockerfile="$repo/deploy/Dockerfile"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# Build-stage COPY lines (before the second FROM) from the context.
awk '/^FROM/ {stage++} stage == 1 && /^COPY / && !/--from/ {for (i = 2; i < NF; i++) print $i}' "$dockerfile" |
  while read -r src; do
    (cd "$repo" && cp -r --parents $src "$scratch/")
  done
# Runtime-stage COPY lines from the context must exist too.
awk '/^FROM/ {stage++} stage == 2 && /^COPY / && !/--from/ {print $2}' "$dockerfile" |
  while read -r src; do
    [ -e "$repo/$src" ] || { echo "Dockerfile copies $src, which does not exist" >&2; exit 1; }
  done
echo "Dockerfile build context: $(cd "$scratch" && ls | tr '\n' ' ')"
(cd "$scratch" && CARGO_TARGET_DIR="$repo/target" cargo check --locked --quiet --bin auditrelay)

# Shared libraries of the binary that distroless/cc-debian12 may lack.
bin="${1:-$repo/target/debug/auditrelay}"
if [ -x "$bin" ]; then
  missing=""
  for lib in $(ldd "$bin" | awk '{print $1}' | grep -vE '^(linux-vdso|/lib64/ld-linux|libc\.|libm\.|libgcc_s\.|libssl\.|libcrypto\.|libdl\.|libpthread\.|librt\.)'); do
    grep -q "$lib" "$dockerfile" || missing="$missing $lib"
  done
  if [ -n "$missing" ]; then
    echo "the binary links$missing, which the Dockerfile does not copy into the runtime image" >&2
    exit 1
  fi
fi
echo "Dockerfile check: OK"
