#!/usr/bin/env bash
# bpfleet on a real cluster, for a person to watch: the images built from
# Dockerfile.operator and Dockerfile.agent (e2e/cluster/images.sh), a
# two-node cluster on this machine (e2e/cluster/cluster.sh: kubelets,
# containerds, kube-proxies), `helm install` of charts/bpfleet, then:
#   1. the operator's two replicas and an agent pod per node Ready, and the
#      agents' real capabilities and seccomp mode read from /proc;
#   2. the HTTP tracer rolled out to both nodes by the operator (through the
#      agents' pods, mTLS from the chart's certificates), seen in
#      `kubectl get tp` and `bpftool prog show`;
#   3. everything deleted: the program unloaded, `helm uninstall`, the
#      cluster stopped and removed.
# With --keep it stays up after step 2 until Ctrl-C and prints the
# KUBECONFIG to use. Run as root.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
keep=0
case "${1:-}" in
  --keep) keep=1 ;;
  "") ;;
  -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "cluster-demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "cluster-demo.sh: run as root (it starts nodes)" >&2; exit 1; }
bin=$root/.cache/controlplane/bin
run=$root/.run/cluster
export KUBECONFIG=$run/admin.kubeconfig
export PATH=$bin:$PATH
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
trap 'bash e2e/cluster/cluster.sh down >/dev/null' EXIT INT TERM

say "images from the Dockerfiles (buildah, bases made from Debian's packages)"
bash e2e/cluster/images.sh
say "a two-node cluster: control plane on the host, each node its own namespaces"
bash e2e/cluster/cluster.sh down >/dev/null
bash e2e/cluster/cluster.sh up
kubectl get nodes -o wide

say "helm install (the chart's defaults; local images; no CAP_SYS_RESOURCE here)"
kubectl create namespace bpfleet-system
kubectl label namespace bpfleet-system pod-security.kubernetes.io/enforce=privileged
helm install bpfleet charts/bpfleet -n bpfleet-system --wait --timeout 300s \
  --set operator.image.repository=localhost/bpfleet/bpfleet-operator \
  --set operator.image.tag=dev --set operator.image.pullPolicy=Never \
  --set agent.image.repository=localhost/bpfleet/bpfleet-agent \
  --set agent.image.tag=dev --set agent.image.pullPolicy=Never \
  --set agent.grantSysResource=false --set agent.signatures.allowUnsigned=true
kubectl get pods -n bpfleet-system -o wide
kubectl get lease -n bpfleet-system bpfleet-operator -o jsonpath='leader: {.spec.holderIdentity}{"\n"}'
for pid in $(pgrep -x bpfleet-agent); do
  echo "agent pid $pid: $(grep -E '^(CapEff|Seccomp|NoNewPrivs):' "/proc/$pid/status" | tr -s '\t\n' '  ')"
done

say "the HTTP tracer rolled out to both nodes"
cargo build -q --locked -p bpfleet-bpf --bin bpfleet-objects -p bpfleet-tracer --bin http-tracer-manifest
for n in node-a node-b; do
  target/debug/bpfleet-objects "$run/$n/bpfleet/objects" >/dev/null
done
target/debug/http-tracer-manifest --object /var/lib/bpfleet/objects/http_tracer.bpf.o \
  --sha256 "$(sha256sum "$run/node-a/bpfleet/objects/http_tracer.bpf.o" | cut -d' ' -f1)" |
  kubectl apply --server-side -f -
kubectl wait tracerprogram/http-tracer --for=jsonpath='{.status.phase}'=Healthy --timeout=180s
kubectl get tracerprograms
bpftool prog show | grep -E '^[0-9]+: ' | grep -c tracepoint | sed 's/^/tracepoint programs loaded on this machine: /'

if [ "$keep" = 1 ]; then
  say "up until Ctrl-C: export KUBECONFIG=$KUBECONFIG"
  sleep infinity &
  wait $! || true
fi

say "deleting: the program unloads, the release goes, the cluster stops"
kubectl delete tracerprogram http-tracer --wait=true --timeout=120s
helm uninstall bpfleet -n bpfleet-system --wait --timeout 120s
bash e2e/cluster/cluster.sh down
trap - EXIT INT TERM
