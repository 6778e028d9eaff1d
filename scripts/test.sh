#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/test-deps.sh: cmake, nginx,
# docker-registry, skopeo, the helm v3.17.3/v3.18.0/v4.1.4 binaries), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
cargo test --locked "$@"
