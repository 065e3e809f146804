#!/usr/bin/env bash
# The fuzz campaign (`make fuzz`): each target in turn, RUNS executions each (default ten million),
# then its corpus minimised (`cargo fuzz cmin`, edge coverage only: hundreds of files per target, not
# thousands). One fuzzer at a time: the machines have two cores.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Usage: fuzz/campaign.sh [TARGET...]   (default: every target); RUNS=N to change the count.
# Each target's libFuzzer output goes to fuzz/logs/<target>.log; a summary line per target is printed.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-10000000}
FLAGS=(-s none)  # safe Rust only in Pollen: panics are what is looked for, not memory errors
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
mkdir -p logs
cargo +nightly fuzz build "${FLAGS[@]}"
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  start=$(date +%s)
  status=0
  cargo +nightly fuzz run "${FLAGS[@]}" "$t" -- -runs="$RUNS" -rss_limit_mb=2048 -print_final_stats=1 \
    >"logs/$t.log" 2>&1 || status=$?
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "logs/$t.log" | tail -1 | cut -d' ' -f2)
  ft=$(grep -o 'ft: [0-9]*' "logs/$t.log" | tail -1 | cut -d' ' -f2)
  crashes=$(ls "artifacts/$t" 2>/dev/null | grep -c . || true)
  echo "$t: executions=${execs:-?} seconds=$secs cov=${cov:-?} ft=${ft:-?} exit=$status artifacts=$crashes"
  cargo +nightly fuzz cmin "${FLAGS[@]}" "$t" -- -rss_limit_mb=2048 -use_counters=0 >"logs/$t.cmin.log" 2>&1
done
