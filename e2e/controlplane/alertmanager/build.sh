#!/usr/bin/env bash
# Builds amtool (github.com/prometheus/alertmanager/cmd/amtool, at the
# version pinned in go.mod and go.sum here) from the Go module proxy into the
# control plane's bin directory, for the chart's alerting tests
# (e2e/tests/chart/alerting.rs: `amtool check-config` and `amtool config
# routes test` on the routing the chart's AlertmanagerConfig renders). Its
# own module, so Alertmanager's dependencies never change the versions the
# other tools build with. A stamp of the inputs makes a second run a no-op.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${BPFLEET_CONTROLPLANE_BIN:-$root/.cache/controlplane/bin}

. "$here/../go-build.sh"
go_env alertmanager/build.sh

tool_begin "amtool" .amtool-inputs.sha256 github.com/prometheus/alertmanager amtool
# Stamp the version `amtool --version` reports (the module version; a module
# build otherwise reports none).
ldflags="-s -w -X github.com/prometheus/common/version.Version=$version -X github.com/prometheus/common/version.Branch=module"
go build -trimpath -ldflags "$ldflags" -o "$out/amtool" github.com/prometheus/alertmanager/cmd/amtool
tool_done
