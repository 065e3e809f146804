#!/bin/bash
# bench.sh: the fleet lab benchmark from a clean clone, in one command (as root):
#
#   e2e/lab/bench.sh run --scenario n8          # or n24, sites3x8; any `pollen-bench` arguments
#   e2e/lab/bench.sh check --nodes 8            # measure the lab's links
#
# Installs the tools the lab uses, builds the edge node, the `pollen` CLI and the lab in release
# mode, then runs `pollen-bench` with the given arguments (default: `run --scenario n8`).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
if [ "$(id -u)" != 0 ]; then
  echo "bench.sh: the fleet lab needs root (network namespaces, tc, iptables)" >&2
  exit 1
fi
bash e2e/tools/install-deps.sh
cargo build --release --locked -p pollen-edge-node -p pollen-trust -p pollen-e2e --bins
if [ "$#" -eq 0 ]; then
  set -- run --scenario n8
fi
exec target/release/pollen-bench "$@"
