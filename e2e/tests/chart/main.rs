//! The Helm chart (`charts/bpfleet`) against reality: helm built from the Go
//! module proxy lints and renders it with defaults and with every optional
//! part on; the rendered manifests are server-side dry-run applied to a real
//! kube-apiserver; every container's privileges, every flag, port and RBAC
//! rule is checked against what the node agent's and operator's code needs,
//! asked of the code itself (clap's command definitions, the capability
//! table, the real Prometheus registries); the Helm-generated mTLS material
//! is verified with openssl; the Dockerfiles build workspace binaries from
//! digest-pinned bases; the Argo CD health check runs in a real Lua
//! interpreter; promtool and amtool, built from the module proxy too, check
//! and unit-test the alerts and their routing; the per-environment values
//! files and the multi-cluster GitOps examples render and apply; the agent
//! and operator binaries run with the chart's arguments.
//!
//! One test binary (it links the agent and operator crates once), one
//! module per topic. Shared helpers live in [`support`] (helm, rendering,
//! reading manifests), [`code`] (what the agent's and operator's code says)
//! and [`processes`] (the real binaries, started and probed); a topic module
//! holds its tests and the helpers only it uses.
//!
//! Stand-ins: ServiceMonitor, PrometheusRule, AlertmanagerConfig
//! (monitoring.coreos.com), cert-manager's Issuer and Certificate and
//! Flux's HelmRelease are not part of Kubernetes. The
//! apiserver test installs minimal stand-in CRDs for them
//! (`stand-in-crds.yaml` beside this file, see its header); they are not the
//! upstream CRDs, whose full validation is not exercised here.
//!
//! Several tests need root and bpffs (they build the agent's core to read
//! its metrics and endpoints, or run the agent binary): run the crate's
//! tests as root, as CI does.

// Test helpers panic on purpose: the panic message is the test report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod code;
mod processes;
mod support;
#[path = "../shared/tracer_spec.rs"]
mod tracer_spec;

mod alerting;
mod apiserver;
mod argocd_health;
mod certificates;
mod crds;
mod dockerfiles;
mod environments;
mod gitops;
mod image_libraries;
mod jaeger;
mod lint;
mod monitoring;
mod ops_script;
mod rbac;
mod registries;
mod running;
mod scrape;
mod security;
mod values;
mod wiring;
