#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) at once, each for
# SECONDS (default 1800) wall clock, under `nice -n 19`, and prints per target
# the run length, executions and executions per second libFuzzer reports.
# Needs scripts/install-fuzz-tools.sh. On a stable toolchain the nightly
# flags are accepted with RUSTC_BOOTSTRAP=1, which this script sets.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#   SANITIZER=none scripts/fuzz.sh 600     without AddressSanitizer
#
# Working corpora grow in fuzz/corpus/<target>/ (not committed), seeded from
# the committed fuzz/seeds/<target>/; crashes land in fuzz/artifacts/<target>/;
# logs in fuzz/logs/<target>.log.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$root/.tools/cargo-fuzz/bin:$PATH"
export RUSTC_BOOTSTRAP=1
seconds="${1:-1800}"
shift || true
sanitizer="${SANITIZER:-address}"
cd "$root/fuzz"
if [ "$#" -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
command -v cargo-fuzz >/dev/null || { echo "fuzz: run scripts/install-fuzz-tools.sh first" >&2; exit 2; }

cargo fuzz build --sanitizer "$sanitizer"
mkdir -p logs
pids=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  nice -n 19 cargo fuzz run --sanitizer "$sanitizer" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -print_final_stats=1 >"logs/$t.log" 2>&1 &
  pids+=($!)
  echo "fuzz: $t started (pid $!)"
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { status=1; echo "fuzz: ${targets[$i]} FAILED: see fuzz/logs/${targets[$i]}.log"; }
done
printf '%-14s %8s %12s %10s\n' target seconds execs exec/s
for t in "${targets[@]}"; do
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' || echo '?')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' || echo '?')
  time=$(grep -o 'Done [0-9]* runs in [0-9]* second' "logs/$t.log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo '?')
  printf '%-14s %8s %12s %10s\n' "$t" "$time" "$execs" "$rate"
done
exit "$status"
