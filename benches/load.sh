#!/usr/bin/env bash
# The scripted load run: installs its tools (wrk, nginx, docker-registry, skopeo, helm), builds
# the release binary, and runs benches/load.py, which writes benches/RESULTS.md.
# RUNS=3 DURATION=4s by default; e.g. RUNS=5 DURATION=10s benches/load.sh for steadier figures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
if ! command -v wrk >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked
exec python3 benches/load.py
