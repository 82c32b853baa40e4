#!/usr/bin/env bash
# Builds the real control plane the tests and the demo run: etcd,
# kube-apiserver and kubectl, and the rest of a cluster for the cluster
# harness (e2e/cluster: kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy), from the Go module proxy, at the versions pinned
# in go.mod/go.sum; then helm, for the chart tests (helm/build.sh),
# cosign, for the image-signature tests (cosign/build.sh), promtool and
# amtool, for the chart's alerting tests (prometheus/build.sh,
# alertmanager/build.sh), and Jaeger, for the test that finds the tracer's
# spans in it (jaeger/build.sh), each its own module and stamp. Output:
# $BPFLEET_CONTROLPLANE_BIN or .cache/controlplane/bin (git-ignored). A
# stamp of the inputs makes a second run a no-op.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${BPFLEET_CONTROLPLANE_BIN:-$root/.cache/controlplane/bin}
bins=(etcd kube-apiserver kubectl kube-controller-manager kube-scheduler kubelet kube-proxy)

. "$here/go-build.sh"
go_env build.sh

stamp="$out/.inputs.sha256"
want=$(inputs_digest "$here/go.mod" "$here/go.sum" "$here/etcd/main.go" "${BASH_SOURCE[0]}")
if up_to_date "$stamp" "$want" "${bins[@]}"; then
  echo "control plane up to date in $out"
  bash "$here/helm/build.sh"
  bash "$here/cosign/build.sh"
  bash "$here/prometheus/build.sh"
  bash "$here/alertmanager/build.sh"
  exec bash "$here/jaeger/build.sh"
fi

version=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")
minor=$(echo "$version" | cut -d. -f2)
# Stamp the version the binaries report (a module build otherwise says v0.0.0-master).
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

mkdir -p "$out"
start=$(date +%s)
cd "$here"
echo "building etcd and Kubernetes $version (${bins[*]:1}) into $out (first build: many minutes)"
go build -trimpath -ldflags "-s -w" -o "$out/etcd" ./etcd
for b in "${bins[@]:1}"; do
  go build -trimpath -ldflags "$ldflags" -o "$out/$b" "k8s.io/kubernetes/cmd/$b"
done
echo "$want" > "$stamp"
echo "control plane built in $(( $(date +%s) - start ))s"
bash "$here/helm/build.sh"
bash "$here/cosign/build.sh"
bash "$here/prometheus/build.sh"
bash "$here/alertmanager/build.sh"
bash "$here/jaeger/build.sh"
