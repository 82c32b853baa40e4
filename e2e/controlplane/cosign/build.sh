#!/usr/bin/env bash
# Builds cosign (github.com/sigstore/cosign/v2/cmd/cosign, at the version
# pinned in go.mod and go.sum here) from the Go module proxy into the control
# plane's bin directory, for the image-signature tests (testsupport::cosign).
# Its own module, so sigstore's dependencies never change the versions the
# control plane or helm build with. v2 stores an image signature the classic
# way (a `sha256-<hex>.sig` tag beside the image), the format the agent reads.
# A stamp of the inputs makes a second run a no-op.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${BPFLEET_CONTROLPLANE_BIN:-$root/.cache/controlplane/bin}

. "$here/../go-build.sh"
go_env cosign/build.sh

stamp="$out/.cosign-inputs.sha256"
want=$(inputs_digest "$here/go.mod" "$here/go.sum" "${BASH_SOURCE[0]}")
if up_to_date "$stamp" "$want" cosign; then
  echo "cosign up to date in $out"
  exit 0
fi

version=$(awk '$1 == "github.com/sigstore/cosign/v2" {print $2; exit}' "$here/go.mod")
mkdir -p "$out"
start=$(date +%s)
cd "$here"
echo "building cosign $version into $out (first build: a few minutes)"
# Stamp the version `cosign version` reports (built as a dependency of this
# module it would otherwise say "devel").
ldflags="-s -w -X sigs.k8s.io/release-utils/version.gitVersion=$version -X sigs.k8s.io/release-utils/version.gitTreeState=clean"
go build -trimpath -ldflags "$ldflags" -o "$out/cosign" github.com/sigstore/cosign/v2/cmd/cosign
echo "$want" > "$stamp"
echo "cosign built in $(( $(date +%s) - start ))s"
