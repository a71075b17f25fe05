#!/usr/bin/env bash
# Runs every fuzz target for a bounded time, starting from the committed
# seeds (fuzz/seeds/<target>) plus whatever corpus earlier runs left in
# fuzz/corpus/<target>. Fails on the first crash, leak, timeout or OOM;
# libFuzzer writes the input to fuzz/artifacts/<target>/.
#
#   fuzz/run.sh                 # every target, FUZZ_SECONDS each (default 30)
#   FUZZ_SECONDS=600 fuzz/run.sh frame konnectivity
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). It runs on the
# stable toolchain with RUSTC_BOOTSTRAP=1 (for -Zsanitizer=address).
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
seconds="${FUZZ_SECONDS:-30}"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build -O
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  log="$(mktemp)"
  echo "== fuzz $t for ${seconds}s"
  if ! cargo fuzz run -O "$t" "corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=65536 \
      -print_final_stats=1 >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz target $t FAILED; reproduce with: cargo fuzz run -O $t fuzz/artifacts/$t/<file>" >&2
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
  cov="$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)"
  corpus="$(find "corpus/$t" -type f | wc -l)"
  summary+=("$t: ${runs:-?} runs, cov ${cov:-?} edges, corpus ${corpus} inputs, no crash")
  rm -f "$log"
done
printf '%s\n' "${summary[@]}"
