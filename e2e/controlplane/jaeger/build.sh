#!/usr/bin/env bash
# Builds Jaeger v2 (github.com/jaegertracing/jaeger/cmd/jaeger, at the
# version pinned in go.mod and go.sum here; the Go module's v1.x tags carry
# the v2 binary, an OpenTelemetry Collector distribution) from the Go module
# proxy into the control plane's bin directory, for the test where the
# tracer's OTLP spans are received by a real Jaeger and found again through
# its query API (e2e/tests/chart/scrape.rs). Its own module, so the
# collector's dependencies never change the versions the other tools build
# with. A stamp of the inputs makes a second run a no-op.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${BPFLEET_CONTROLPLANE_BIN:-$root/.cache/controlplane/bin}

. "$here/../go-build.sh"
go_env jaeger/build.sh

tool_begin "jaeger" .jaeger-inputs.sha256 github.com/jaegertracing/jaeger jaeger
# Stamp the module version `jaeger version` reports (a module build
# otherwise reports none; Jaeger's own release build stamps the v2 tag).
ldflags="-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=module-$version"
go build -trimpath -ldflags "$ldflags" -o "$out/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger
tool_done
