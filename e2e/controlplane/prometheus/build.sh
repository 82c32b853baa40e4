#!/usr/bin/env bash
# Builds promtool and the Prometheus server (github.com/prometheus/prometheus
# cmd/promtool and cmd/prometheus, at the version pinned in go.mod and go.sum
# here) from the Go module proxy into the control plane's bin directory:
# promtool for the chart's alerting tests (e2e/tests/chart/alerting.rs:
# `promtool check rules` and `promtool test rules` on the rendered
# PrometheusRule), the server for the test that scrapes a running operator
# and agent and asks every dashboard query and alert expression
# (e2e/tests/chart/scrape.rs). Its own module, so Prometheus's dependencies
# never change the versions the control plane, helm or cosign build with. A
# stamp of the inputs makes a second run a no-op.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
out=${BPFLEET_CONTROLPLANE_BIN:-$root/.cache/controlplane/bin}

. "$here/../go-build.sh"
go_env prometheus/build.sh

tool_begin "promtool and prometheus" .prometheus-inputs.sha256 github.com/prometheus/prometheus promtool prometheus
# Stamp the version `--version` reports (the module version; a
# module build otherwise reports none).
ldflags="-s -w -X github.com/prometheus/common/version.Version=$version -X github.com/prometheus/common/version.Branch=module"
# remove_all_sd: Prometheus's build tag that leaves out every service
# discovery plugin (cloud SDKs, Kubernetes client); the tests only check
# rules and scrape static loopback targets. A cold build of promtool took
# 262 s with it against 1012 s without (2 cores, other builds running).
go build -tags remove_all_sd -trimpath -ldflags "$ldflags" -o "$out/" \
  github.com/prometheus/prometheus/cmd/promtool github.com/prometheus/prometheus/cmd/prometheus
tool_done
