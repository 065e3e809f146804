#!/usr/bin/env bash
# The demo (`make demo`): a signed update rolled out to a local fleet, every part real.
# Installs the tools the first time (cached in .tools/), builds the binaries, then runs pollen-demo.
# Extra arguments go to pollen-demo (see `cargo run -p pollen-e2e --bin pollen-demo -- --help`).
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "==> first run: installs the tools and builds a Kubernetes API server and Pollen (several minutes); later runs start in seconds"
cargo build --locked -q -p pollen-e2e --bin pollen-demo
exec target/debug/pollen-demo "$@"
