#!/usr/bin/env bash
# The main job, locally: a real control plane (etcd + kube-apiserver), the
# bpfleet CRDs, the example TracerPrograms and TracerPolicy, and what
# `kubectl get` shows for them. With --keep it stays up until Ctrl-C and
# prints the KUBECONFIG to use; otherwise it stops everything at the end.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

keep=0
case "${1:-}" in
  --keep) keep=1 ;;
  "") ;;
  -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

run=$root/.run
mkdir -p "$run"
export KUBECONFIG=$run/kubeconfig
rm -f "$KUBECONFIG"
kubectl=$root/.cache/controlplane/bin/kubectl

cargo build -q --locked -p bpfleet-e2e --bin bpfleet-controlplane
"$root/target/debug/bpfleet-controlplane" --kubeconfig "$KUBECONFIG" --install-crds >"$run/controlplane.log" 2>&1 &
cp_pid=$!
cleanup() { kill "$cp_pid" 2>/dev/null && wait "$cp_pid" 2>/dev/null; true; }
trap cleanup EXIT INT TERM

for _ in $(seq 1 180); do
  grep -q '^KUBECONFIG=' "$run/controlplane.log" 2>/dev/null && break
  kill -0 "$cp_pid" 2>/dev/null || { cat "$run/controlplane.log" >&2; exit 1; }
  sleep 0.5
done
grep -q '^KUBECONFIG=' "$run/controlplane.log" || { echo "control plane did not come up" >&2; cat "$run/controlplane.log" >&2; exit 1; }
head -1 "$run/controlplane.log"

echo "+ kubectl apply --server-side -f examples/"
"$kubectl" apply --server-side -f examples/
echo "+ kubectl get crd"
"$kubectl" get crd
echo "+ kubectl get tracerprograms"
"$kubectl" get tracerprograms
echo "+ kubectl get tracerpolicies"
"$kubectl" get tracerpolicies
echo "+ kubectl explain tracerprogram.spec.strategy.canary.steps"
"$kubectl" explain tracerprogram.spec.strategy.canary.steps | sed -n '1,20p'

if [ "$keep" = 1 ]; then
  echo
  echo "control plane stays up; in another shell: export KUBECONFIG=$KUBECONFIG; PATH=$root/.cache/controlplane/bin:\$PATH"
  echo "Ctrl-C stops it."
  wait "$cp_pid"
fi
