#!/usr/bin/env bash
# Prepares a fresh machine for bpfleet's build, tests and demo. Idempotent:
# a second run installs nothing and takes a second.
#  - Debian packages for BPF C (clang, llvm, libbpf's build: libelf, zlib,
#    pkg-config), bpftool, iproute2 for network namespaces, wrk and
#    nginx-light for the tracer benchmark (scripts/bench-tracer.sh);
#    docker-registry (distribution 2.8) and apache2-utils (htpasswd -B) for
#    the image tests' local registry (testsupport::registry), never left
#    running as a service; buildah to build bpfman-format bytecode images
#    (testsupport::buildah; no daemon, vfs storage); containerd, runc,
#    containernetworking-plugins, iptables and debootstrap for the cluster
#    harness's nodes and images (e2e/cluster), containerd never left
#    running as a service;
#  - a bpffs on /sys/fs/bpf and tracefs on /sys/kernel/tracing;
#  - etcd, kube-apiserver and kubectl (and helm, promtool, the Prometheus
#    server, amtool and Jaeger for the chart tests, cosign for the
#    image-signature tests) built from the Go module proxy.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

packages=(clang llvm libelf-dev zlib1g-dev pkg-config bpftool iproute2 gcc make curl python3 lua5.4 openssl wrk nginx-light docker-registry apache2-utils buildah containerd runc containernetworking-plugins iptables debootstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: missing packages ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages that ship a daemon (docker-registry) must not start it on a real
  # port: the tests run their own registries on loopback. Deny service starts
  # during the install unless the machine already has a policy of its own.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# bpfleet setup.sh: no service starts during its install\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    own_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ "$own_policy" = 1 ]; then rm -f "$policy"; trap - EXIT; fi
  # Nor at the next boot, under either init.
  for service in docker-registry containerd; do
    if [ -e "/etc/init.d/$service" ] || [ -e "/lib/systemd/system/$service.service" ]; then
      update-rc.d "$service" disable >/dev/null 2>&1 || true
      deb-systemd-helper disable "$service.service" >/dev/null 2>&1 || true
    fi
  done
fi

for tool in cargo go; do
  command -v "$tool" >/dev/null || { echo "setup.sh: $tool is required and not on PATH" >&2; exit 1; }
done

# BPF tests pin under /sys/fs/bpf; mount bpffs when it is not there.
if [ "$(id -u)" = 0 ] && [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != "bpf_fs" ]; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpffs /sys/fs/bpf
fi

# Tracepoint attachment looks event ids up in tracefs.
if [ "$(id -u)" = 0 ] && [ ! -d /sys/kernel/tracing/events ]; then
  mount -t tracefs tracefs /sys/kernel/tracing
fi

bash "$root/e2e/controlplane/build.sh"
