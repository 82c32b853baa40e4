#!/usr/bin/env bash
# The HTTP tracer's soak (root, real kernel, not in CI): the release agent
# with the tracer in two revisions, nginx in a namespace, a client at a
# fixed rate for MINUTES (30 by default), the revision switched and the
# sampling policy changed all along; the agent's RSS and open fds sampled
# into target/soak/soak-<time>.csv, their slopes, events lost and the
# tracer's count against nginx's access log reported at the end. See
# node-agent/benches/soak/main.rs; settings by environment (SOAK_RATE,
# SOAK_THREADS, SOAK_SWITCH_SECONDS, SOAK_CONFIG_SECONDS,
# SOAK_SAMPLE_SECONDS, SOAK_NICE).
#
#   sudo scripts/soak.sh 30
#
# Leaves nothing loaded or running: it prints the BPF program count before
# and after, and the soak fails if one of the tracer's programs survives.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

minutes=${1:-30}
case "$minutes" in
  '' | *[!0-9]*) echo "soak.sh: MINUTES must be a whole number, got '$minutes'" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "soak.sh: needs root (BPF, network namespaces)" >&2
  exit 1
fi
for tool in nginx nsenter ip bpftool; do
  command -v "$tool" >/dev/null || {
    echo "soak.sh: $tool missing (scripts/setup.sh installs it)" >&2
    exit 1
  }
done

# The soak removes what it made, also when it fails; a signal kills it
# before it can: then remove its namespace and pin root here.
leftovers() {
  for ns in $(ip netns list | awk '/^bpfleet-soak-/ {print $1}'); do ip netns del "$ns"; done
  for pin in /sys/fs/bpf/bpfleet-soak-*; do [ -e "$pin" ] && rm -rf "$pin"; done
  return 0
}
trap leftovers EXIT

# Builds the soak and, in the same (release) profile, the agent it starts;
# the build runs at the lowest priority, the soak at the caller's.
nice -n 19 cargo bench -p bpfleet-agent --bench soak --no-run
before=$(bpftool prog show | grep -c '^[0-9]*:' || true)
echo "BPF programs loaded before: $before"
SOAK_MINUTES=$minutes cargo bench -p bpfleet-agent --bench soak
after=$(bpftool prog show | grep -c '^[0-9]*:' || true)
echo "BPF programs loaded after: $after"
trap - EXIT
if ip netns list | grep -q '^bpfleet-soak-' || ls /sys/fs/bpf | grep -q '^bpfleet-soak-'; then
  echo "soak.sh: a soak namespace or pin root was left behind" >&2
  exit 1
fi
