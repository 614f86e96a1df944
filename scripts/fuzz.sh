#!/usr/bin/env bash
# Builds the fuzz target (fuzz/fuzz_targets/requests.rs) with libFuzzer and coverage
# instrumentation on stable Rust, and runs it for FUZZ_SECONDS (default 20). A crash fails with
# the input saved under fuzz/artifacts/. With nightly and cargo-fuzz, `cargo fuzz run requests`
# works from fuzz/ too.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the instrumentation out of build scripts (as cargo fuzz does).
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --quiet --bin requests --target "$host"
mkdir -p corpus/requests artifacts/requests
"target/$host/release/requests" corpus/requests seeds -max_total_time="${FUZZ_SECONDS:-20}" -max_len=4096 \
  -artifact_prefix=artifacts/requests/ -print_final_stats=1 2>&1 | tail -15
