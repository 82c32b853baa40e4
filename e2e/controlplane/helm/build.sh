#!/usr/bin/env bash
# Builds helm (helm.sh/helm/v3/cmd/helm, at the version pinned in go.mod and
# go.sum here) from the Go module proxy into the control plane's bin
# directory, for the chart tests (e2e/tests/chart/). Its own module, so
# helm's Kubernetes libraries never change the versions the control plane
# builds with. A stamp of the inputs makes a second run a no-op.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${BPFLEET_CONTROLPLANE_BIN:-$root/.cache/controlplane/bin}

. "$here/../go-build.sh"
go_env helm/build.sh

tool_begin "helm" .helm-inputs.sha256 helm.sh/helm/v3 helm
# As helm's Makefile does: the Kubernetes version `helm template` and `helm
# lint` assume comes from the client-go it is built with (v0.37 -> 1.37).
client_go=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$here/go.mod")
k8s_minor=$(echo "$client_go" | cut -d. -f2)
# Stamp the version `helm version` reports (a module build otherwise says v3.x-dev).
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
go build -trimpath -ldflags "$ldflags" -o "$out/helm" helm.sh/helm/v3/cmd/helm
tool_done
