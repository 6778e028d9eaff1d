#!/usr/bin/env bash
# The scripted load run: installs its tools (wrk, GNU time, nginx, docker-registry, skopeo, helm), builds
# the release binary, and runs benches/load.py, which writes benches/RESULTS.md.
# RUNS=3 DURATION=4s by default; e.g. RUNS=5 DURATION=10s benches/load.sh for steadier figures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
for tool in wrk:wrk /usr/bin/time:time; do
  if ! command -v "${tool%%:*}" >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null
  fi
done
cargo build --release --locked
# ONLY=airgap runs benches/airgap.py (warm, export, import) instead, writing RESULTS-airgap.md
if [ "${ONLY:-}" = airgap ]; then exec python3 benches/airgap.py; fi
# ONLY=store runs benches/shared_store.py (a replica on a bucket against one on its disk)
if [ "${ONLY:-}" = store ]; then exec python3 benches/shared_store.py; fi
# ONLY=page runs benches/page.py (the catalog page on the 15k index; BASE_BIN=... adds the
# pull path with and without the page), writing RESULTS-page.md
if [ "${ONLY:-}" = page ]; then exec python3 benches/page.py; fi
# ONLY=growth runs benches/growth.py (index size and cache size against time and memory)
if [ "${ONLY:-}" = growth ]; then exec python3 benches/growth.py; fi
exec python3 benches/load.py
