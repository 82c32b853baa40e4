#!/usr/bin/env bash
# Smoke run of every fuzz target in fuzz/ (docs/reliability.md, "Fuzzing"):
# each target runs for SECONDS (default 10) from the committed corpus, with
# libFuzzer on the stable toolchain (RUSTC_BOOTSTRAP=1, no sanitizer; debug
# assertions and overflow checks on). Fails on the first crash, slow unit
# (over 10 s) or out-of-memory; the input is left in fuzz/artifacts/TARGET/.
#
#   scripts/fuzz.sh [SECONDS]          every target
#   FUZZ_TARGETS="rules" scripts/fuzz.sh 60
#
# cargo-fuzz is installed from crates.io on first use into
# .cache/cargo-fuzz-VERSION/ and reused while that version is the one named
# here. New inputs go to fuzz/.run/corpus/TARGET/ (not committed); the
# committed corpus/ is only read. The regression replay of the corpus needs
# none of this: `cargo test --manifest-path fuzz/Cargo.toml`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-10}"
version=0.13.2
root="$PWD/.cache/cargo-fuzz-$version"
targets="${FUZZ_TARGETS:-http_segments tracer_events rules agent_requests agent_replies}"

if [ "$("$root/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $version" ]; then
  echo "== installing cargo-fuzz $version into $root"
  cargo install cargo-fuzz --locked --version "=$version" --root "$root"
fi
export PATH="$root/bin:$PATH"
# libFuzzer's instrumentation passes are nightly flags; stable rustc takes
# them with RUSTC_BOOTSTRAP. No sanitizer: ASan needs nightly's std.
export RUSTC_BOOTSTRAP=1
flags=(--sanitizer none --debug-assertions)

# cargo-fuzz has no --locked: fail here rather than build with a lock file
# it rewrote.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null
cargo fuzz build "${flags[@]}"
for t in $targets; do
  echo "== $t: ${seconds}s"
  mkdir -p "fuzz/.run/corpus/$t"
  status=0
  cargo fuzz run "${flags[@]}" "$t" "fuzz/.run/corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"fuzz/.run/$t.log" 2>&1 || status=$?
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^stat::(number_of_executed_units|average_exec_per_sec)' \
    "fuzz/.run/$t.log" || true
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $t failed (exit $status); log: fuzz/.run/$t.log, input: fuzz/artifacts/$t/" >&2
    tail -40 "fuzz/.run/$t.log" >&2
    exit 1
  fi
done
echo "fuzz smoke: ${seconds}s per target, no crash"
