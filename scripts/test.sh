#!/usr/bin/env bash
# Every check CI makes, in CI's order: formatting, generated CRDs, lints, and
# the whole test suite (unit, real kernel, real kube-apiserver, real
# registry and cosign), then a short coverage-guided run of every fuzz
# target (FUZZ_SECONDS each, default 10). Run as root: the agent tests load
# real BPF programs. Expects scripts/setup.sh to have run
# (`make test` does both).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }
# Free disk and what the builds hold, printed at each step: a build that runs
# out of disk fails with a bare compiler error, so the log says how close it
# came.
disk() {
  local used=""
  for d in target fuzz/target; do
    [ -d "$d" ] && used+=" $d $(du -sh "$d" 2>/dev/null | cut -f1)"
  done
  echo "disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free;${used:- nothing built}"
}

step "cargo fmt --check"
cargo fmt --all --check

step "crds/ generated from the Rust types"
cargo run -q --locked -p bpfleet-api --bin crdgen -- --check

step "clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
# The agent with its test-only fault points (and tests/crash.rs, which
# needs them).
cargo clippy --locked -p bpfleet-agent --all-targets --features fault-injection -- -D warnings
# The fuzz targets and their replay tests (fuzz/, its own workspace).
cargo fmt --all --check --manifest-path fuzz/Cargo.toml
cargo clippy --locked --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

progs() { bpftool prog show 2>/dev/null | grep -c '^[0-9]*:' || true; }
before=$(progs)

disk
step "tests"
start=$(date +%s)
cargo test --locked --workspace
echo "tests took $(( $(date +%s) - start ))s"

disk
step "crash consistency (the agent built with its fault points)"
start=$(date +%s)
cargo test --locked -p bpfleet-agent --features fault-injection --test crash --lib
echo "crash tests took $(( $(date +%s) - start ))s"

disk
step "fuzz corpus replayed (fuzz/, its own workspace; stable, no cargo-fuzz)"
cargo test --locked --manifest-path fuzz/Cargo.toml

disk
step "fuzz smoke run: every target, coverage-guided, from the committed corpus"
start=$(date +%s)
bash scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
echo "fuzz smoke took $(( $(date +%s) - start ))s"

disk
after=$(progs)
if [ "$after" -gt "$before" ]; then
  echo "BPF programs left loaded by the tests: $before before, $after after" >&2
  bpftool prog show >&2
  exit 1
fi
