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

tool_begin "cosign" .cosign-inputs.sha256 github.com/sigstore/cosign/v2 cosign
# Stamp the version `cosign version` reports (built as a dependency of this
# module it would otherwise say "devel").
ldflags="-s -w -X sigs.k8s.io/release-utils/version.gitVersion=$version -X sigs.k8s.io/release-utils/version.gitTreeState=clean"
go build -trimpath -ldflags "$ldflags" -o "$out/cosign" github.com/sigstore/cosign/v2/cmd/cosign
tool_done
