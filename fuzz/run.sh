#!/usr/bin/env bash
# Runs the fuzz targets one after another and prints one statistics line per target.
#   fuzz/run.sh [SECONDS] [TARGET...]     (default: 600 s each, every target)
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The corpus grows in
# fuzz/corpus/<target> (not committed; the committed seeds are fuzz/seeds/<target>), crashes
# land in fuzz/artifacts/<target>, logs in fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(image checkpoint prompt_bundle tokenizer dataset)
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  before=$(ls "artifacts/$t" | wc -l)
  rc=0
  cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10 \
    -print_final_stats=1 >"logs/$t.log" 2>&1 || rc=$?
  stat() { grep -a "^stat::$1:" "logs/$t.log" | tail -1 | awk '{print $2}'; }
  crashes=$(($(ls "artifacts/$t" | wc -l) - before))
  printf '%s: exit %s, %s s, %s execs, %s exec/s, corpus %s files (%s), peak RSS %s MB, new crashes %s\n' \
    "$t" "$rc" "$secs" "$(stat number_of_executed_units)" "$(stat average_exec_per_sec)" \
    "$(ls "corpus/$t" | wc -l)" "$(du -sh "corpus/$t" | cut -f1)" "$(stat peak_rss_mb)" "$crashes"
done
