#!/usr/bin/env bash
# Runs chartbridge on its embedded default configuration (listen 127.0.0.1:5000, cache in
# ./chartbridge-data, public upstreams such as MetalLB and ingress-nginx). Extra arguments go to
# `chartbridge serve`, e.g. scripts/run.sh --config config/chartbridge.example.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null; then
  # pingora's zlib-ng is built with cmake.
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake >/dev/null
  else
    echo "chartbridge needs cmake to build: sudo apt-get install -y cmake" >&2
    exit 1
  fi
fi
exec cargo run --locked --release -- serve "$@"
