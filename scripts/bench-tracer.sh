#!/usr/bin/env bash
# The HTTP tracer benchmark (root, real kernel): wrk and two fixed-rate
# clients against nginx on loopback, without the tracer and with it loaded
# in the release agent in each mode (metrics mode on the server end, events
# on both ends, metrics mode on both ends), every round. See
# node-agent/benches/wrk/main.rs for what is measured; settings by
# environment (BENCH_ROUNDS, BENCH_SECONDS, BENCH_CONNECTIONS, BENCH_RATE,
# BENCH_HIGH_RATE, BENCH_RATE_SECONDS, BENCH_RATE_THREADS, BENCH_MODES,
# BENCH_PERF=<dir> to profile each mode once with perf: where the BPF time
# goes, per program and per kernel function it calls).
#
#   sudo scripts/bench-tracer.sh
#
# Leaves nothing loaded or running: it prints the BPF program count before
# and after, and the bench fails if one of the tracer's programs survives.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

if [ "$(id -u)" != 0 ]; then
  echo "bench-tracer.sh: needs root (BPF, network namespaces)" >&2
  exit 1
fi
for tool in wrk nginx nsenter ip bpftool; do
  command -v "$tool" >/dev/null || {
    echo "bench-tracer.sh: $tool missing (scripts/setup.sh installs it)" >&2
    exit 1
  }
done

# The bench removes what it made, also when it fails; a signal (Ctrl-C)
# kills it before it can: then remove its namespace and pin root here
# (nginx and the agent are in this process group and get the signal too).
leftovers() {
  for ns in $(ip netns list | awk '/^bpfleet-bench-/ {print $1}'); do ip netns del "$ns"; done
  for pin in /sys/fs/bpf/bpfleet-bench-*; do [ -e "$pin" ] && rm -rf "$pin"; done
  return 0
}
trap leftovers EXIT

# Builds the bench and, in the same (release) profile, the agent binary it
# starts.
cargo bench -p bpfleet-agent --bench wrk --no-run
before=$(bpftool prog show | grep -c '^[0-9]*:' || true)
echo "BPF programs loaded before: $before"
cargo bench -p bpfleet-agent --bench wrk
after=$(bpftool prog show | grep -c '^[0-9]*:' || true)
echo "BPF programs loaded after: $after"
trap - EXIT
if ip netns list | grep -q '^bpfleet-bench-' || ls /sys/fs/bpf | grep -q '^bpfleet-bench-'; then
  echo "bench-tracer.sh: a bench namespace or pin root was left behind" >&2
  exit 1
fi
