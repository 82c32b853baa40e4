//! The Helm chart (`charts/bpfleet`) against reality: helm built from the Go
//! module proxy lints and renders it with defaults and with every optional
//! part on; the rendered manifests are server-side dry-run applied to a real
//! kube-apiserver; every container's privileges, every flag, port and RBAC
//! rule is checked against what the node agent's and operator's code needs;
//! the Helm-generated mTLS material is verified with openssl; the Dockerfiles
//! build workspace binaries from digest-pinned bases; the Argo CD health
//! check runs in a real Lua interpreter.
//!
//! Stand-ins: ServiceMonitor, PrometheusRule (monitoring.coreos.com) and
//! cert-manager's Issuer and Certificate are not part of Kubernetes. The
//! apiserver test installs minimal stand-in CRDs for them whose schemas list
//! the upstream field names the chart uses (and nothing else, so a misspelt
//! field is refused by strict field validation); they are not the upstream
//! CRDs, whose full validation is not exercised here.

// Test helpers panic on purpose: the panic message is the test report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bpfleet_e2e::{ControlPlane, binary_dir, workspace_root};
use serde::Deserialize;
use serde_json::{Value, json};

const RELEASE: &str = "bpfleet";
const NS: &str = "bpfleet-system";
const OPERATOR: &str = "bpfleet-operator";
const AGENT: &str = "bpfleet-agent";

// ---------------------------------------------------------------- helpers

fn chart() -> PathBuf {
    workspace_root().join("charts/bpfleet")
}

fn all_on() -> String {
    chart()
        .join("ci/all-on-values.yaml")
        .to_string_lossy()
        .into_owned()
}

fn read(rel: &str) -> String {
    let p = workspace_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// helm from `.cache/controlplane/bin`, with its config, cache and data in
/// a private directory (nothing read from or written to $HOME).
fn helm(args: &[&str]) -> Output {
    let bin = binary_dir().join("helm");
    assert!(
        bin.is_file(),
        "{} not found; build it with `bash e2e/controlplane/build.sh`",
        bin.display()
    );
    let home = std::env::temp_dir().join(format!("bpfleet-helm-home-{}", std::process::id()));
    Command::new(bin)
        .args(args)
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("running helm")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `helm template` of the chart (CRDs included) with extra arguments.
fn render(extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        NS,
        "--include-crds",
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        out.status.success(),
        "helm template {extra:?}: {}",
        text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn render_fails(extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", RELEASE, chart.to_str().unwrap(), "-n", NS];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(!out.status.success(), "helm template {extra:?} succeeded");
    text(&out)
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == k).collect()
}

fn named<'a>(docs: &'a [Value], k: &str, name: &str) -> &'a Value {
    kind(docs, k)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} {name} rendered"))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Pod templates of every workload, with the workload's name.
fn pod_specs(docs: &[Value]) -> Vec<(String, &Value)> {
    docs.iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some("Deployment" | "DaemonSet" | "StatefulSet" | "Job")
            )
        })
        .map(|d| {
            (
                d["metadata"]["name"].as_str().unwrap().to_string(),
                &d["spec"]["template"]["spec"],
            )
        })
        .collect()
}

fn container<'a>(docs: &'a [Value], workload: &str, k: &str) -> &'a Value {
    &named(docs, k, workload)["spec"]["template"]["spec"]["containers"][0]
}

/// `--flag=value` / `--flag` arguments as (flag, value).
fn flags(args: &[String]) -> Vec<(String, Option<String>)> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        })
        .collect()
}

fn flag(args: &[String], name: &str) -> String {
    flags(args)
        .into_iter()
        .find(|(f, _)| f == name)
        .and_then(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name} not passed: {args:?}"))
}

fn port_of(c: &Value, name: &str) -> u64 {
    c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

fn port_in(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The text between `start` and the next `end` in `hay`.
fn between<'a>(hay: &'a str, start: &str, end: &str) -> &'a str {
    let i = hay
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found"));
    let rest = &hay[i + start.len()..];
    &rest[..rest
        .find(end)
        .unwrap_or_else(|| panic!("{end:?} not found"))]
}

/// Capabilities the agent keeps after setup, from node-agent/src/hooks.rs
/// (`KEEP_AFTER_SETUP`), as Kubernetes names (`BPF`, `PERFMON`, ...).
fn agent_kept_capabilities() -> BTreeSet<String> {
    let hooks = read("node-agent/src/hooks.rs");
    let list = between(&hooks, "pub const KEEP_AFTER_SETUP: &[u32] = &[", "];");
    let caps: BTreeSet<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.strip_prefix("caps::")
                .expect("caps:: constant")
                .to_string()
        })
        .collect();
    assert!(caps.contains("BPF"), "parsed {caps:?}");
    caps
}

/// The long flags of a clap `#[derive(Args/Parser)]` struct's body.
fn clap_flags(body: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut attrs = String::new();
    for line in body.lines().map(str::trim) {
        if line.starts_with("#[") || (!attrs.is_empty() && !line.starts_with("pub ")) {
            attrs.push_str(line);
        }
        if let Some(field) = line.strip_prefix("pub ") {
            let name = field.split(':').next().unwrap().trim();
            let long = match attrs.find("long = \"") {
                Some(i) => attrs[i + 8..].split('"').next().unwrap().to_string(),
                None => name.replace('_', "-"),
            };
            if attrs.contains("#[arg") && attrs.contains("long") {
                out.insert(format!("--{long}"));
            }
            attrs.clear();
        } else if line.starts_with("///") {
            attrs.clear();
        }
    }
    out
}

/// The long flags of `bpfleet-agent serve`, from node-agent/src/cli.rs.
fn agent_serve_flags() -> BTreeSet<String> {
    let cli = read("node-agent/src/cli.rs");
    let out = clap_flags(between(&cli, "pub struct ServeArgs {", "\n}\n"));
    assert!(
        out.contains("--pin-root") && out.contains("--trusted-key"),
        "{out:?}"
    );
    out
}

/// The long flags of `bpfleet-operator`, from operator/src/run.rs.
fn operator_flags() -> BTreeSet<String> {
    let run = read("operator/src/run.rs");
    let out = clap_flags(between(&run, "pub struct Args {", "\n}\n"));
    assert!(
        out.contains("--leader-elect") && out.contains("--agent-ca"),
        "{out:?}"
    );
    out
}

/// Metric names a prometheus-client registry in `src` exports:
/// `registry.register("name", "help", var.clone())`, typed by the `let var =`
/// line (counters get `_total`, histograms `_bucket`/`_count`/`_sum`), plus
/// the descriptors a custom collector encodes.
fn registered_metrics(src: &str) -> BTreeSet<String> {
    let prefix = if src.contains("Registry::with_prefix(\"bpfleet\")") {
        "bpfleet_"
    } else {
        ""
    };
    let mut out = BTreeSet::new();
    for part in src.split("registry.register(").skip(1) {
        let call = &part[..part.find(");").unwrap()];
        if !call.trim_start().starts_with('"') {
            continue; // a name from a variable: see the literal passes below
        }
        let name = format!("{prefix}{}", call.split('"').nth(1).unwrap());
        let var = call
            .rsplit(',')
            .find(|a| a.contains(".clone()"))
            .unwrap()
            .trim()
            .trim_end_matches(".clone()");
        // `let var = Family::<..>` or a struct field `var: Family<..>`.
        let field = var.trim_start_matches("self.");
        let decl = src
            .lines()
            .map(str::trim)
            .find(|l| {
                l.starts_with(&format!("let {var} ="))
                    || l.starts_with(&format!("{field}:"))
                    || l.starts_with(&format!("pub {field}:"))
            })
            .unwrap_or_else(|| panic!("no declaration of {var} for {name}"));
        if decl.contains("Histogram") {
            for s in ["_bucket", "_count", "_sum"] {
                out.insert(format!("{name}{s}"));
            }
        } else if decl.contains("Counter") {
            out.insert(format!("{name}_total"));
        } else {
            out.insert(name);
        }
    }
    for part in src.split("encode_descriptor(").skip(1) {
        if !part.trim_start().starts_with('"') {
            continue;
        }
        let name = part.split('"').nth(1).unwrap();
        let call = &part[..part.find(")?;").unwrap()];
        if call.contains("MetricType::Counter") {
            out.insert(format!("{name}_total"));
        } else {
            out.insert(name.to_string());
        }
    }
    out
}

/// Metric names written as string literals and typed by the call they are
/// passed to, nearest first: `counter(` / `gauge(` helpers, the histogram
/// families' `(name, help, fam)` list, a `(name, help, v)` list of counters
/// (node-agent/src/http/export.rs).
fn literal_metrics(src: &str) -> BTreeSet<String> {
    let markers = [
        ("counter(", "counter"),
        ("gauge(", "gauge"),
        ("(name, help, fam)", "histogram"),
        ("(name, help, v)", "counter"),
    ];
    let mut out = BTreeSet::new();
    for (i, lit) in src.split('"').enumerate() {
        let is_name = (lit.starts_with("bpfleet_") || lit.starts_with("http_"))
            && lit.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        if i % 2 == 0 || !is_name {
            continue;
        }
        let before: String = src.split('"').take(i).collect::<Vec<_>>().join("\"");
        let Some((_, kind)) = markers
            .iter()
            .filter_map(|(m, k)| before.rfind(m).map(|at| (at, *k)))
            .max_by_key(|(at, _)| *at)
        else {
            continue;
        };
        match kind {
            "counter" => out.insert(format!("{lit}_total")),
            "histogram" => {
                for suffix in ["_bucket", "_count", "_sum"] {
                    out.insert(format!("{lit}{suffix}"));
                }
                true
            }
            _ => out.insert(lit.to_string()),
        };
    }
    out
}

/// What the agent exports: its registry and collectors (metrics.rs) and
/// the HTTP tracer's (http/export.rs).
fn agent_metrics() -> BTreeSet<String> {
    let mut out = registered_metrics(&read("node-agent/src/metrics.rs"));
    let export = read("node-agent/src/http/export.rs");
    out.extend(registered_metrics(&export));
    out.extend(literal_metrics(&export));
    for m in [
        "bpfleet_program_run_seconds_total",
        "bpfleet_tracer_events_lost_total",
        "bpfleet_tracer_reader_up",
        "http_server_request_duration_seconds_count",
    ] {
        assert!(out.contains(m), "{m} not found in the agent: {out:?}");
    }
    out
}

fn operator_metrics() -> BTreeSet<String> {
    let out = registered_metrics(&read("operator/src/metrics.rs"));
    assert!(out.contains("bpfleet_rollout_aborts_total"), "{out:?}");
    out
}

// ------------------------------------------------------------------ tests

#[test]
fn chart_crds_are_the_generated_ones() {
    let list = |dir: &Path| -> BTreeMap<String, String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read_to_string(&p).unwrap(),
                )
            })
            .collect()
    };
    let generated = list(&workspace_root().join("crds"));
    let copied = list(&chart().join("crds"));
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        copied.keys().collect::<Vec<_>>(),
        "charts/bpfleet/crds must hold exactly crds/*: cp crds/*.yaml charts/bpfleet/crds/"
    );
    for (name, text) in &generated {
        assert!(
            copied[name] == *text,
            "charts/bpfleet/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/bpfleet/crds/"
        );
    }
}

#[test]
fn chart_lints_with_defaults_and_everything_on() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let all_on = all_on();
    for extra in [vec![], vec!["-f", all_on.as_str()]] {
        let mut args = vec!["lint", "--strict", chart, "--namespace", NS];
        args.extend(extra.iter().copied());
        let out = helm(&args);
        assert!(out.status.success(), "helm lint {extra:?}: {}", text(&out));
        assert!(text(&out).contains("0 chart(s) failed"), "{}", text(&out));
    }
    // Defaults and everything-on render what they should.
    let defaults = docs(&render(&[]));
    let full = docs(&render(&["-f", &all_on]));
    let kinds = |d: &[Value]| -> BTreeSet<String> {
        d.iter()
            .map(|v| v["kind"].as_str().unwrap().to_string())
            .collect()
    };
    for k in ["ServiceMonitor", "PrometheusRule", "Certificate", "Issuer"] {
        assert!(!kinds(&defaults).contains(k), "{k} rendered by default");
        assert!(kinds(&full).contains(k), "{k} missing with everything on");
    }
    assert_eq!(kind(&defaults, "Secret").len(), 2, "helm-mode TLS secrets");
    assert_eq!(kind(&full, "Secret").len(), 0, "cert-manager writes them");
    assert_eq!(kind(&full, "ServiceMonitor").len(), 2);
    let dashboards: Vec<_> = kind(&full, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dashboards.len(), 3, "three dashboards");
    assert_eq!(kind(&defaults, "CustomResourceDefinition").len(), 2);
}

#[test]
fn bad_values_fail_with_the_field_named() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--set", "operator.replicas=0"], &["/operator/replicas"]),
        (&["--set", "agent.grpcPort=70000"], &["/agent/grpcPort"]),
        (&["--set", "tls.mode=selfsigned"], &["/tls/mode"]),
        (
            &["--set", "agent.seccompProfile=Unconfied"],
            &["seccompProfile"],
        ),
        (&["--set", "operator.replica=2"], &["'replica' not allowed"]),
        (&["--set", "agent.pinRoot=/var/run/bpf"], &["pinRoot"]),
        (
            &["--set", "monitoring.prometheusRule.httpErrorRatio=5"],
            &["httpErrorRatio"],
        ),
        (&["--set", "agent.image.digest=latest"], &["digest"]),
        (
            &["--set-string", "operator.agentSelector=tier in (agent)"],
            &["/operator/agentSelector"],
        ),
        (
            &["--set", "operator.leaderElection.enabled=false"],
            &["operator.leaderElection.enabled"],
        ),
        (
            &["--set", "agent.metricsPort=50051"],
            &["agent.grpcPort and agent.metricsPort"],
        ),
        (
            &["--set", "tls.mode=existing"],
            &["tls.existing.agentSecret"],
        ),
        (&["--set", "otlp.enabled=true"], &["otlp.endpoint"]),
    ];
    for (args, wanted) in cases {
        let err = render_fails(args);
        for w in *wanted {
            assert!(err.contains(w), "{args:?}: error does not name {w}:\n{err}");
        }
    }
}

#[test]
fn containers_hold_only_what_the_code_needs() {
    let kept = agent_kept_capabilities();
    for (label, extra, sys_admin) in [
        ("defaults", vec![], false),
        ("everything on", vec!["-f".to_string(), all_on()], true),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let d = docs(&render(&extra));
        let specs = pod_specs(&d);
        assert_eq!(specs.len(), 2, "{label}: one Deployment, one DaemonSet");
        for (name, spec) in &specs {
            // File modes as plain integers: `0440` is octal to YAML 1.1
            // (Kubernetes) but a string or decimal to YAML 1.2 tools.
            for v in spec["volumes"].as_array().unwrap() {
                for src in ["secret", "configMap"] {
                    let mode = &v[src]["defaultMode"];
                    assert!(
                        v[src].is_null() || mode.is_u64(),
                        "{label} {name}: volume {} has defaultMode {mode}",
                        v["name"]
                    );
                }
            }
            assert!(
                spec["hostNetwork"].is_null() && spec["hostIPC"].is_null(),
                "{label} {name}: no host network or IPC"
            );
            let mut containers: Vec<&Value> =
                spec["containers"].as_array().unwrap().iter().collect();
            if let Some(init) = spec["initContainers"].as_array() {
                containers.extend(init);
            }
            for c in containers {
                let sc = &c["securityContext"];
                let what = format!("{label} {name}/{}", c["name"]);
                assert_ne!(sc["privileged"], json!(true), "{what}: privileged");
                assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{what}");
                assert_eq!(sc["readOnlyRootFilesystem"], json!(true), "{what}");
                assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{what}");
                assert!(c["resources"]["requests"].is_object(), "{what}: requests");
                assert!(c["resources"]["limits"]["memory"].is_string(), "{what}");
                assert!(
                    c["livenessProbe"].is_object() && c["readinessProbe"].is_object(),
                    "{what}: probes"
                );
            }
        }

        // Operator: non-root, no capability, no host access.
        let op = named(&d, "Deployment", OPERATOR);
        let pod = &op["spec"]["template"]["spec"];
        assert_eq!(op["spec"]["replicas"], 2, "{label}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_ne!(pod["securityContext"]["runAsUser"], 0);
        assert!(pod["hostPID"].is_null(), "{label}: operator has no hostPID");
        let c = &pod["containers"][0];
        assert!(c["securityContext"]["capabilities"]["add"].is_null());
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v["hostPath"].is_null()),
            "{label}: operator mounts nothing from the node"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");

        // Agent: exactly the capabilities the code keeps (+ CAP_SYS_ADMIN for
        // BPF stats when asked, which the agent drops after setup).
        let ds = named(&d, "DaemonSet", AGENT);
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostPID"], true, "{label}: uprobes need hostPID");
        let c = &pod["containers"][0];
        let added: BTreeSet<String> = strs(&c["securityContext"]["capabilities"]["add"])
            .into_iter()
            .collect();
        let mut want = kept.clone();
        if sys_admin {
            want.insert("SYS_ADMIN".into());
        }
        assert_eq!(
            added, want,
            "{label}: agent capabilities vs KEEP_AFTER_SETUP"
        );
        let hooks = read("node-agent/src/hooks.rs");
        assert!(
            hooks.contains("(CAP_SYS_ADMIN) happen before the drop"),
            "the agent no longer documents that CAP_SYS_ADMIN is setup-only; re-check agent.bpfStats"
        );
        let rolling = &ds["spec"]["updateStrategy"];
        assert_eq!(rolling["type"], "RollingUpdate");
        assert_eq!(rolling["rollingUpdate"]["maxUnavailable"], 1);
        assert!(
            pod["tolerations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["operator"] == "Exists" && t["key"].is_null()),
            "{label}: agent tolerates every taint"
        );
        // Host paths: exactly these, read-only where the agent only reads.
        let mounts: BTreeMap<String, &Value> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["name"].as_str().unwrap().to_string(), m))
            .collect();
        let host: BTreeMap<String, String> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["hostPath"].is_object())
            .map(|v| {
                (
                    v["hostPath"]["path"].as_str().unwrap().to_string(),
                    v["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            host.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "/sys/fs/bpf",
                "/sys/kernel/btf",
                "/sys/kernel/tracing",
                "/var/lib/bpfleet",
                "/var/log/pods"
            ],
            "{label}: agent host paths"
        );
        assert_eq!(
            pod["automountServiceAccountToken"], false,
            "{label}: the agent calls no API, so holds no token"
        );
        for ro in ["/sys/kernel/btf", "/sys/kernel/tracing", "/var/log/pods"] {
            assert_eq!(mounts[&host[ro]]["readOnly"], true, "{label}: {ro}");
        }
        assert_ne!(
            mounts[&host["/sys/fs/bpf"]]["mountPropagation"], "Bidirectional",
            "Bidirectional propagation needs a privileged container"
        );
    }
}

#[test]
fn flags_ports_and_selectors_agree_with_the_code() {
    let serve = agent_serve_flags();
    let operator = operator_flags();
    for extra in [vec![], vec!["-f".to_string(), all_on()]] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let d = docs(&render(&extra));
        let agent = container(&d, AGENT, "DaemonSet");
        let args = strs(&agent["args"]);
        assert_eq!(args[0], "serve");
        for (f, _) in flags(&args) {
            assert!(
                serve.contains(&f),
                "agent flag {f} is not a `serve` flag of node-agent/src/cli.rs"
            );
        }
        // Every file the agent is pointed at is mounted.
        let mount_paths: Vec<String> = agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap().to_string())
            .collect();
        for (f, v) in flags(&args) {
            let Some(v) = v else { continue };
            if v.starts_with('/') && f != "--pin-root" && f != "--http-route" {
                assert!(
                    mount_paths
                        .iter()
                        .any(|m| v == *m || v.starts_with(&format!("{m}/"))),
                    "{f}={v} is not on a mounted volume"
                );
            }
        }
        assert!(
            mount_paths
                .iter()
                .any(|m| flag(&args, "--pin-root").starts_with(&format!("{m}/"))),
            "pin root on the bpffs mount"
        );
        let grpc = port_of(agent, "grpc");
        let metrics = port_of(agent, "metrics");
        assert_eq!(port_in(&flag(&args, "--listen")), grpc);
        assert_eq!(port_in(&flag(&args, "--metrics-listen")), metrics);
        // Probes hit paths the agent's metrics listener serves.
        let served = read("node-agent/src/metrics.rs");
        for (probe, path) in [
            ("readinessProbe", "/api/health"),
            ("livenessProbe", "/metrics"),
        ] {
            assert_eq!(agent[probe]["httpGet"]["path"], path, "{probe}");
            assert_eq!(agent[probe]["httpGet"]["port"], "metrics", "{probe}");
            assert!(
                served.contains(&format!("\"{path}\"")),
                "the agent serves no {path}"
            );
        }

        let op = container(&d, OPERATOR, "Deployment");
        let oargs = strs(&op["args"]);
        for (f, _) in flags(&oargs) {
            assert!(
                operator.contains(&f),
                "operator flag {f} is not a flag of operator/src/run.rs"
            );
        }
        for f in [
            "--leader-elect",
            "--lease-name",
            "--identity",
            "--client-key",
        ] {
            assert!(flags(&oargs).iter().any(|(g, _)| g == f), "{f} missing");
        }
        assert_eq!(flag(&oargs, "--agent-port").parse::<u64>().unwrap(), grpc);
        assert_eq!(
            port_in(&flag(&oargs, "--metrics-listen")),
            port_of(op, "metrics")
        );
        // The operator's agent selector selects the agent pods.
        let agent_labels = &named(&d, "DaemonSet", AGENT)["spec"]["template"]["metadata"]["labels"];
        for term in flag(&oargs, "--agent-selector").split(',') {
            let (k, v) = term.split_once('=').unwrap();
            assert_eq!(agent_labels[k], v, "--agent-selector term {term}");
        }
        // The agent's certificate name is what the operator checks.
        let name = flag(&oargs, "--agent-tls-name");
        for cert in kind(&d, "Certificate") {
            if cert["metadata"]["name"] == "bpfleet-agent-tls" {
                assert_eq!(strs(&cert["spec"]["dnsNames"]), std::slice::from_ref(&name));
            }
        }
        // NetworkPolicy: gRPC only from the operator's pods, by port name.
        let np = named(&d, "NetworkPolicy", AGENT);
        let op_labels =
            &named(&d, "Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"];
        let rules = np["spec"]["ingress"].as_array().unwrap();
        let grpc_rules: Vec<&Value> = rules
            .iter()
            .filter(|r| r["ports"][0]["port"] == "grpc")
            .collect();
        assert_eq!(grpc_rules.len(), 1);
        let from = grpc_rules[0]["from"].as_array().expect("gRPC has a from");
        assert_eq!(from.len(), 1);
        for (k, v) in from[0]["podSelector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&op_labels[k], v, "operator pods match the gRPC rule");
        }
        assert!(
            from[0]["namespaceSelector"].is_null(),
            "same namespace only"
        );
        assert!(rules.iter().any(|r| r["ports"][0]["port"] == "metrics"));
    }
}

/// (apiGroup, resource, verb, resourceName or "") of every rule of a role.
fn grants(role: &Value) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for r in role["rules"].as_array().unwrap() {
        let names = strs(&r["resourceNames"]);
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for g in strs(&r["apiGroups"]) {
            for res in strs(&r["resources"]) {
                for v in strs(&r["verbs"]) {
                    for n in &names {
                        out.insert((g.clone(), res.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

fn expand(spec: &[(&str, &[&str], &[&str], &str)]) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for (g, res, verbs, name) in spec {
        for r in *res {
            for v in *verbs {
                out.insert((
                    g.to_string(),
                    r.to_string(),
                    v.to_string(),
                    name.to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_what_the_code_uses() {
    let d = docs(&render(&["-f", &all_on()]));
    for role in kind(&d, "ClusterRole").into_iter().chain(kind(&d, "Role")) {
        for (g, r, v, _) in grants(role) {
            assert!(
                g != "*" && r != "*" && v != "*",
                "wildcard in {}",
                role["metadata"]["name"]
            );
            assert!(
                !["escalate", "bind", "impersonate"].contains(&v.as_str()),
                "{v} granted"
            );
            assert!(
                v != "deletecollection" || r == "controllerrevisions",
                "deletecollection on {r}"
            );
            assert!(
                r != "secrets",
                "nobody reads Secrets: the kubelet mounts them"
            );
        }
    }
    // The operator's calls (operator/src/run.rs, controller.rs, leader.rs):
    // watches programs, policies, nodes, agent pods; patches program
    // finalizers and status; reads bytecode ConfigMaps; keeps revision
    // snapshots (ControllerRevisions, pruned with delete_collection) and its
    // Lease in its namespace; records events.
    let op_src = ["run.rs", "controller.rs", "leader.rs"]
        .map(|f| read(&format!("operator/src/{f}")))
        .join("\n");
    for needle in [
        "Api<ControllerRevision> = Api::namespaced(",
        "delete_collection(",
        "Api::<Pod>::namespaced(",
        "Api::<Node>::all(",
        "Api<ConfigMap> = Api::namespaced(",
        "api.replace(&cfg.name",
        "patch_status(",
        "finalizer(&api",
    ] {
        assert!(
            op_src.contains(needle),
            "the operator no longer calls {needle}; update the chart's RBAC and this test"
        );
    }
    let op = expand(&[
        (
            "bpfleet.dev",
            &["tracerprograms"],
            &["get", "list", "watch", "patch", "update"],
            "",
        ),
        (
            "bpfleet.dev",
            &["tracerpolicies"],
            &["get", "list", "watch"],
            "",
        ),
        (
            "bpfleet.dev",
            &["tracerprograms/status", "tracerpolicies/status"],
            &["get", "patch", "update"],
            "",
        ),
        (
            "bpfleet.dev",
            &["tracerprograms/finalizers"],
            &["update"],
            "",
        ),
        ("", &["nodes"], &["get", "list", "watch"], ""),
        ("", &["events"], &["create", "patch"], ""),
        ("events.k8s.io", &["events"], &["create", "patch"], ""),
    ]);
    assert_eq!(grants(named(&d, "ClusterRole", OPERATOR)), op);
    // With bytecode namespaces listed, ConfigMaps are readable only there.
    let bytecode = named(&d, "Role", "bpfleet-operator-bytecode");
    assert_eq!(bytecode["metadata"]["namespace"], "bpfleet-bytecode");
    assert_eq!(
        grants(bytecode),
        expand(&[("", &["configmaps"], &["get"], "")])
    );
    // Without, one cluster-wide `get` on ConfigMaps is added, nothing else.
    let defaults = docs(&render(&[]));
    let mut with_cm = op.clone();
    with_cm.extend(expand(&[("", &["configmaps"], &["get"], "")]));
    assert_eq!(grants(named(&defaults, "ClusterRole", OPERATOR)), with_cm);
    assert!(
        kind(&defaults, "Role")
            .iter()
            .all(|r| r["metadata"]["name"] != "bpfleet-operator-bytecode")
    );

    let ns_role = named(&d, "Role", OPERATOR);
    assert_eq!(ns_role["metadata"]["namespace"], NS);
    assert_eq!(
        grants(ns_role),
        expand(&[
            ("", &["pods"], &["get", "list", "watch"], ""),
            (
                "apps",
                &["controllerrevisions"],
                &[
                    "get",
                    "list",
                    "create",
                    "patch",
                    "delete",
                    "deletecollection"
                ],
                ""
            ),
        ])
    );
    let lease = named(&d, "Role", "bpfleet-operator-leader-election");
    assert_eq!(lease["metadata"]["namespace"], NS);
    assert_eq!(
        grants(lease),
        expand(&[
            ("coordination.k8s.io", &["leases"], &["create"], ""),
            (
                "coordination.k8s.io",
                &["leases"],
                &["get", "update"],
                "bpfleet-operator"
            ),
        ])
    );
    // The agent never calls the API (pod identity from kubelet's log
    // directory): no role at all, no token mounted.
    let agent_cargo = read("node-agent/Cargo.toml");
    assert!(
        !agent_cargo
            .lines()
            .any(|l| l.starts_with("kube") || l.starts_with("k8s-openapi")),
        "the agent now depends on a Kubernetes client: give it RBAC in the chart"
    );
    for b in kind(&d, "ClusterRoleBinding")
        .into_iter()
        .chain(kind(&d, "RoleBinding"))
    {
        for s in b["subjects"].as_array().unwrap() {
            assert_ne!(s["name"], AGENT, "the agent is bound to a role");
        }
    }
    // Every binding names this release's service accounts only.
    for b in kind(&d, "ClusterRoleBinding")
        .into_iter()
        .chain(kind(&d, "RoleBinding"))
    {
        for s in b["subjects"].as_array().unwrap() {
            assert_eq!(s["kind"], "ServiceAccount");
            assert_eq!(s["namespace"], NS);
            assert!([OPERATOR, AGENT].contains(&s["name"].as_str().unwrap()));
        }
    }
}

/// Metric names in a PromQL expression: every `bpfleet_*` identifier, and
/// `http_*` identifiers used as a selector (followed by `{` or `[`; the
/// tracer's label names start with `http_` too).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start().chars().next();
            if word.starts_with("bpfleet_")
                || (word.starts_with("http_") && matches!(next, Some('{' | '[')))
            {
                out.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn alerts_and_dashboards_use_metrics_that_exist() {
    let values: Value = serde_yaml::from_str(&read("charts/bpfleet/values.yaml")).unwrap();
    let pr = &values["monitoring"]["prometheusRule"];
    let mut known = agent_metrics();
    known.extend(operator_metrics());
    // The tracer metric names in values are ones the agent exports.
    for m in [
        pr["eventsLostMetric"].as_str().unwrap().to_string(),
        format!("{}_count", pr["httpDurationMetric"].as_str().unwrap()),
    ] {
        assert!(
            known.contains(&m),
            "values name {m}, which the agent does not export"
        );
    }

    let d = docs(&render(&["-f", &all_on()]));
    let rule = &kind(&d, "PrometheusRule")[0];
    let mut alerts = BTreeSet::new();
    let mut exprs = Vec::new();
    for g in rule["spec"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            alerts.insert(r["alert"].as_str().unwrap().to_string());
            let e = r["expr"].as_str().unwrap();
            assert_eq!(
                e.matches('(').count(),
                e.matches(')').count(),
                "unbalanced: {e}"
            );
            assert_eq!(e.matches('{').count(), e.matches('}').count(), "{e}");
            exprs.push(e.to_string());
        }
    }
    for a in [
        "BpfleetAgentDown",
        "BpfleetTracerDown",
        "BpfleetHttpErrorRateHigh",
        "BpfleetRolloutAborted",
        "BpfleetProgramErrors",
        "BpfleetBpfCpuOverBudget",
        "BpfleetTracerEventsLost",
    ] {
        assert!(alerts.contains(a), "alert {a} missing: {alerts:?}");
    }
    let http = pr["httpDurationMetric"].as_str().unwrap();
    assert!(exprs.iter().any(|e| e.contains(&format!("{http}_count"))));
    // Agent alerts select the job the agent ServiceMonitor produces.
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("job=\"bpfleet-agent-metrics\""))
    );
    named(&d, "Service", "bpfleet-agent-metrics");
    named(&d, "Service", "bpfleet-operator-metrics");

    for cm in kind(&d, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
    {
        for (file, body) in cm["data"].as_object().unwrap() {
            let dash: Value = serde_json::from_str(body.as_str().unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(dash["uid"].is_string() && dash["title"].is_string());
            for p in dash["panels"].as_array().unwrap() {
                for t in p["targets"].as_array().unwrap() {
                    exprs.push(t["expr"].as_str().unwrap().to_string());
                }
            }
        }
    }
    let mut used = BTreeSet::new();
    for e in &exprs {
        for m in metrics_in(e) {
            assert!(
                known.contains(&m),
                "{m} is exported by nobody (in `{e}`); known: {known:?}"
            );
            used.insert(m);
        }
    }
    // Every metric of the agent core, and the tracer's health, is shown or
    // alerted on somewhere.
    let mut core = registered_metrics(&read("node-agent/src/metrics.rs"));
    core.extend([
        "bpfleet_tracer_events_lost_total".to_string(),
        "bpfleet_tracer_reader_up".to_string(),
    ]);
    for m in core {
        assert!(used.contains(&m), "{m} appears in no dashboard or alert");
    }
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (scripts/setup.sh)")
}

#[test]
fn helm_generated_certificates_chain_to_separate_cas() {
    use base64::Engine;
    let d = docs(&render(&[]));
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    for (secret, prefix) in [
        ("bpfleet-agent-tls", "agent"),
        ("bpfleet-operator-tls", "op"),
    ] {
        let s = named(&d, "Secret", secret);
        assert_eq!(s["type"], "kubernetes.io/tls");
        for key in ["tls.crt", "tls.key", "ca.crt"] {
            let b = base64::engine::general_purpose::STANDARD
                .decode(s["data"][key].as_str().unwrap())
                .unwrap();
            std::fs::write(p(&format!("{prefix}-{key}")), b).unwrap();
        }
    }
    let ok = |args: &[&str]| {
        let out = openssl(args);
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
        text(&out)
    };
    // Each side's certificate chains to its own CA, for its purpose.
    ok(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        &p("agent-ca.crt"),
        &p("agent-tls.crt"),
    ]);
    ok(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        &p("op-ca.crt"),
        &p("op-tls.crt"),
    ]);
    // ...and not to the other's: an agent's key cannot drive other agents.
    for (ca, cert) in [
        ("op-ca.crt", "agent-tls.crt"),
        ("agent-ca.crt", "op-tls.crt"),
    ] {
        let out = openssl(&["verify", "-CAfile", &p(ca), &p(cert)]);
        assert!(!out.status.success(), "{cert} verifies against {ca}");
    }
    let san = ok(&[
        "x509",
        "-noout",
        "-ext",
        "subjectAltName",
        "-in",
        &p("agent-tls.crt"),
    ]);
    assert!(san.contains("DNS:bpfleet-agent"), "{san}");
    // Keys match certificates.
    for side in ["agent", "op"] {
        let a = ok(&[
            "x509",
            "-noout",
            "-pubkey",
            "-in",
            &p(&format!("{side}-tls.crt")),
        ]);
        let b = ok(&["pkey", "-pubout", "-in", &p(&format!("{side}-tls.key"))]);
        assert_eq!(a, b, "{side} key matches its certificate");
    }
    // Pods restart when the material changes: the checksum covers it.
    let a = named(&d, "DaemonSet", AGENT)["spec"]["template"]["metadata"]["annotations"]
        ["checksum/tls"]
        .clone();
    assert!(a.is_string());
}

#[test]
fn dockerfiles_build_workspace_binaries_from_pinned_bases() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", text(&out));
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let values: Value = serde_yaml::from_str(&read("charts/bpfleet/values.yaml")).unwrap();
    let setup = read("scripts/setup.sh");
    let setup_packages = between(&setup, "packages=(", ")");
    for (file, package, dir, binary, component) in [
        (
            "Dockerfile.operator",
            "bpfleet-operator",
            "operator",
            OPERATOR,
            "operator",
        ),
        (
            "Dockerfile.agent",
            "bpfleet-agent",
            "node-agent",
            AGENT,
            "agent",
        ),
    ] {
        let df = read(file);
        let pkg = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == package)
            .unwrap_or_else(|| panic!("{file}: no workspace package {package}"));
        assert!(
            pkg["manifest_path"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{dir}/Cargo.toml")),
            "{package} lives in {dir}/"
        );
        assert!(
            pkg["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == binary && strs(&t["kind"]).contains(&"bin".to_string())),
            "{file}: crate {package} ({dir}/) has no binary {binary} yet"
        );
        assert!(
            df.contains(&format!(
                "cargo build --release --locked -p {package} --bin {binary}"
            )),
            "{file} builds {binary} from {package}"
        );
        assert!(df.contains(&format!("target/release/{binary} /out/{binary}")));
        assert!(df.contains(&format!(
            "COPY --from=build /out/{binary} /usr/local/bin/{binary}"
        )));
        assert!(df.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")));
        // Syntax, as far as it can be checked without BuildKit: every
        // instruction is known, exec forms are JSON arrays, RUN --mount
        // comes with the dockerfile frontend that supports it.
        let mut logical = String::new();
        for line in df.lines() {
            let t = line.trim();
            if logical.is_empty() && (t.is_empty() || t.starts_with('#')) {
                continue;
            }
            logical.push_str(t.trim_end_matches('\\'));
            logical.push(' ');
            if t.ends_with('\\') {
                continue;
            }
            let (inst, rest) = logical.trim().split_once(' ').unwrap();
            assert!(
                [
                    "FROM",
                    "RUN",
                    "COPY",
                    "ARG",
                    "ENV",
                    "WORKDIR",
                    "LABEL",
                    "USER",
                    "EXPOSE",
                    "ENTRYPOINT",
                    "CMD"
                ]
                .contains(&inst),
                "{file}: unknown instruction {inst}"
            );
            if inst == "ENTRYPOINT" || inst == "CMD" {
                serde_json::from_str::<Vec<String>>(rest.trim())
                    .unwrap_or_else(|e| panic!("{file}: {inst} {rest} is not exec form: {e}"));
            }
            logical.clear();
        }
        assert!(logical.is_empty(), "{file} ends inside a continuation");
        if df.contains("--mount=type=cache") {
            assert!(
                df.starts_with("# syntax=docker/dockerfile:1."),
                "{file}: RUN --mount needs the syntax line"
            );
        }
        let froms: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert!(froms.len() >= 2, "{file} is multi-stage");
        for f in &froms {
            let image = f.split_whitespace().nth(1).unwrap();
            let digest = image.split_once("@sha256:").map(|(_, d)| d).unwrap_or("");
            assert!(
                digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
                "{file}: {image} is not pinned by digest"
            );
        }
        // The documented build command tags the image the chart pulls.
        let repo = values[component]["image"]["repository"].as_str().unwrap();
        assert!(
            df.contains(&format!("docker build -f {file} -t {repo}:")),
            "{file}: build command tags {repo}"
        );
        assert!(
            std::fs::metadata(workspace_root().join(format!("{file}.dockerignore"))).is_ok(),
            "{file}.dockerignore keeps target/ out of the context"
        );
        // Build packages match the ones the repository builds with.
        if let Some(line) = df.lines().find(|l| l.contains("apt-get install")) {
            let list = line.split("--no-install-recommends").nth(1).unwrap();
            for p in list
                .split_whitespace()
                .take_while(|w| *w != "\\" && *w != "&&")
            {
                assert!(
                    setup_packages.split_whitespace().any(|s| s == p),
                    "{file} installs {p}, which scripts/setup.sh does not"
                );
            }
        }
    }
    assert!(
        read("Dockerfile.operator").contains("USER 65532:65532"),
        "operator image is non-root"
    );
    // The chart's operator pod runs as the image's user.
    let d = docs(&render(&[]));
    assert_eq!(
        named(&d, "Deployment", OPERATOR)["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        65532
    );
}

/// A serde_json value as a Lua table constructor.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn program(generation: i64, status: Option<Value>) -> Value {
    let mut o = json!({
        "apiVersion": "bpfleet.dev/v1alpha1",
        "kind": "TracerProgram",
        "metadata": {"name": "http-tracer", "generation": generation},
    });
    if let Some(s) = status {
        o["status"] = s;
    }
    o
}

fn conditions(generation: i64, on: &[&str], message: &str) -> Value {
    let all = ["Ready", "Reconciling", "Stalled", "Paused", "Degraded"];
    json!(
        all.iter()
            .map(|t| json!({
                "type": t,
                "status": if on.contains(t) { "True" } else { "False" },
                "reason": "R",
                "message": if on.contains(t) { message } else { "" },
                "observedGeneration": generation,
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }))
            .collect::<Vec<_>>()
    )
}

#[test]
fn argocd_health_check_maps_conditions() {
    let script = read("deploy/argocd/tracerprogram-health.lua");
    // The argocd-cm patch carries the same script.
    let patch: Value = serde_yaml::from_str(&read("deploy/argocd/argocd-cm-patch.yaml")).unwrap();
    assert_eq!(
        patch["data"]["resource.customizations.health.bpfleet.dev_TracerProgram"]
            .as_str()
            .unwrap(),
        script,
        "argocd-cm-patch.yaml and tracerprogram-health.lua differ"
    );
    let status = |g: i64, on: &[&str], msg: &str, phase: &str| json!({"observedGeneration": g, "phase": phase, "message": msg, "conditions": conditions(g, on, msg)});
    let cases = [
        (program(1, None), "Progressing", "observe"),
        (
            program(3, Some(status(2, &["Ready"], "ok", "Healthy"))),
            "Progressing",
            "generation 3",
        ),
        (
            program(2, Some(status(2, &["Ready"], "10/10 nodes", "Healthy"))),
            "Healthy",
            "10/10 nodes",
        ),
        (
            program(
                2,
                Some(status(2, &["Reconciling"], "step 2/6", "Progressing")),
            ),
            "Progressing",
            "step 2/6",
        ),
        (
            program(
                2,
                Some(status(2, &["Paused"], "awaiting promotion", "Paused")),
            ),
            "Suspended",
            "awaiting promotion",
        ),
        (
            program(
                2,
                Some(status(
                    2,
                    &["Stalled", "Degraded"],
                    "gate errorRate failed",
                    "Aborted",
                )),
            ),
            "Degraded",
            "gate errorRate failed",
        ),
        (
            program(
                2,
                Some(status(2, &["Degraded"], "2 node(s) failing", "Degraded")),
            ),
            "Degraded",
            "2 node(s) failing",
        ),
        // Degraded wins over Paused: a paused rollout with failing nodes needs a person.
        (
            program(
                2,
                Some(status(
                    2,
                    &["Paused", "Degraded"],
                    "1 node(s) failing",
                    "Paused",
                )),
            ),
            "Degraded",
            "failing",
        ),
        (
            program(2, Some(json!({"observedGeneration": 2}))),
            "Progressing",
            "",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (obj, want, msg)) in cases.iter().enumerate() {
        let chunk = format!(
            "obj = {}\nlocal hs = (function()\n{script}\nend)()\nio.write(hs.status, \"\\t\", hs.message or \"\")\n",
            lua(obj)
        );
        let file = dir.path().join(format!("case{i}.lua"));
        std::fs::write(&file, chunk).unwrap();
        let out = Command::new("lua5.4")
            .arg(&file)
            .output()
            .expect("lua5.4 is installed (scripts/setup.sh)");
        assert!(out.status.success(), "case {i}: {}", text(&out));
        let got = String::from_utf8(out.stdout).unwrap();
        let (status, message) = got.split_once('\t').unwrap();
        assert_eq!(status, *want, "case {i}: {obj}");
        assert!(
            message.contains(msg),
            "case {i}: message {message:?} lacks {msg:?}"
        );
    }
}

// -------------------------------------------------- real apiserver

/// Stand-ins for CRDs the chart uses but Kubernetes does not ship: schemas
/// with the upstream field names the chart uses, strict otherwise.
const STAND_IN_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: servicemonitors.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor, listKind: ServiceMonitorList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            required: [selector, endpoints]
            properties:
              jobLabel: {type: string}
              selector:
                type: object
                properties:
                  matchLabels: {type: object, additionalProperties: {type: string}}
              namespaceSelector:
                type: object
                properties:
                  any: {type: boolean}
                  matchNames: {type: array, items: {type: string}}
              endpoints:
                type: array
                items:
                  type: object
                  properties:
                    port: {type: string}
                    path: {type: string}
                    scheme: {type: string, enum: [http, https]}
                    interval: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                    scrapeTimeout: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                    relabelings:
                      type: array
                      items:
                        type: object
                        properties:
                          sourceLabels: {type: array, items: {type: string}}
                          targetLabel: {type: string}
                          action: {type: string}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: prometheusrules.monitoring.coreos.com}
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: PrometheusRule, plural: prometheusrules, singular: prometheusrule, listKind: PrometheusRuleList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            properties:
              groups:
                type: array
                items:
                  type: object
                  required: [name, rules]
                  properties:
                    name: {type: string, minLength: 1}
                    rules:
                      type: array
                      items:
                        type: object
                        required: [expr]
                        properties:
                          alert: {type: string}
                          record: {type: string}
                          expr: {x-kubernetes-int-or-string: true}
                          for: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                          labels: {type: object, additionalProperties: {type: string}}
                          annotations: {type: object, additionalProperties: {type: string}}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: issuers.cert-manager.io}
spec:
  group: cert-manager.io
  scope: Namespaced
  names: {kind: Issuer, plural: issuers, singular: issuer, listKind: IssuerList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            properties:
              selfSigned: {type: object}
              ca:
                type: object
                required: [secretName]
                properties:
                  secretName: {type: string}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: certificates.cert-manager.io}
spec:
  group: cert-manager.io
  scope: Namespaced
  names: {kind: Certificate, plural: certificates, singular: certificate, listKind: CertificateList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            required: [secretName, issuerRef]
            properties:
              secretName: {type: string}
              commonName: {type: string}
              isCA: {type: boolean}
              dnsNames: {type: array, items: {type: string}}
              usages:
                type: array
                items: {type: string, enum: [signing, digital signature, content commitment, key encipherment, key agreement, data encipherment, cert sign, crl sign, encipher only, decipher only, any, server auth, client auth, code signing, email protection, s/mime, ipsec end system, ipsec tunnel, ipsec user, timestamping, ocsp signing, microsoft sgc, netscape sgc]}
              duration: {type: string}
              renewBefore: {type: string}
              privateKey:
                type: object
                properties:
                  algorithm: {type: string, enum: [RSA, ECDSA, Ed25519]}
                  size: {type: integer}
                  rotationPolicy: {type: string, enum: [Never, Always]}
              issuerRef:
                type: object
                required: [name]
                properties:
                  name: {type: string}
                  kind: {type: string}
                  group: {type: string}
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// The pod a workload would create, as a Pod manifest in `ns`.
fn pod_of(docs: &[Value], k: &str, name: &str, ns: &str) -> Value {
    let w = named(docs, k, name);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("{name}-probe"), "namespace": ns,
                      "labels": w["spec"]["template"]["metadata"]["labels"]},
        "spec": w["spec"]["template"]["spec"],
    })
}

fn can_i(cp: &ControlPlane, sa: &str, args: &[&str]) -> bool {
    let who = format!("--as=system:serviceaccount:{NS}:{sa}");
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.push(&who);
    let out = cp.kubectl().unwrap().args(&all).output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        answer == "yes" || answer == "no",
        "can-i {args:?}: {}",
        text(&out)
    );
    answer == "yes"
}

#[tokio::test]
async fn rendered_chart_applies_to_a_real_apiserver() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("bpfleet CRDs install");
    let dir = tempfile::tempdir().unwrap();
    let stand_ins = write(dir.path(), "stand-in-crds.yaml", STAND_IN_CRDS);
    cp.kubectl_ok(&["apply", "--server-side", "-f", &stand_ins])
        .expect("stand-in CRDs install");
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        &stand_ins,
    ])
    .expect("stand-in CRDs established");
    for ns in [NS, "bpfleet-bytecode"] {
        cp.kubectl_ok(&["create", "namespace", ns]).unwrap();
    }

    for (label, extra) in [
        ("defaults", vec![]),
        ("everything on", vec!["-f".to_string(), all_on()]),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let yaml = render(&extra);
        let n = docs(&yaml).len();
        let file = write(dir.path(), "rendered.yaml", &yaml);
        let out = cp
            .kubectl_ok(&["apply", "--server-side", "--dry-run=server", "-f", &file])
            .unwrap_or_else(|e| panic!("{label}: the apiserver refuses the chart: {e}"));
        let applied = out
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        assert_eq!(applied, n, "{label}: every object accepted:\n{out}");
    }

    // The GitOps programs directory, built by kubectl's kustomize as Argo CD
    // and Flux build it, is accepted by the real CRDs.
    let programs = workspace_root().join("deploy/gitops/programs");
    let built = cp
        .kubectl_ok(&["kustomize", &programs.to_string_lossy()])
        .expect("kustomize build");
    assert!(built.contains("kind: TracerProgram"), "{built}");
    let f = write(dir.path(), "programs.yaml", &built);
    cp.kubectl_ok(&["apply", "--server-side", "--dry-run=server", "-f", &f])
        .expect("GitOps programs accepted by the CRDs");

    // Pod Security admission, for real: the operator's pod passes
    // `restricted`; the agent's pod is refused by `baseline` (hostPID,
    // hostPath, capabilities) and accepted by `privileged`, which is why the
    // release namespace needs that label. --allow-privileged=false on this
    // apiserver refuses any privileged container outright.
    let d = docs(&render(&[]));
    for (ns, level) in [
        ("psa-restricted", "restricted"),
        ("psa-baseline", "baseline"),
        ("psa-privileged", "privileged"),
    ] {
        cp.kubectl_ok(&["create", "namespace", ns]).unwrap();
        cp.kubectl_ok(&[
            "label",
            "namespace",
            ns,
            &format!("pod-security.kubernetes.io/enforce={level}"),
        ])
        .unwrap();
        for sa in [OPERATOR, AGENT] {
            cp.kubectl_ok(&["-n", ns, "create", "serviceaccount", sa])
                .unwrap();
        }
    }
    let try_pod = |pod: Value| -> Result<String, String> {
        let f = write(dir.path(), "pod.json", &pod.to_string());
        cp.kubectl_ok(&["create", "--dry-run=server", "-f", &f])
            .map_err(|e| e.to_string())
    };
    try_pod(pod_of(&d, "Deployment", OPERATOR, "psa-restricted"))
        .expect("operator pod meets the restricted Pod Security Standard");
    let refused = try_pod(pod_of(&d, "DaemonSet", AGENT, "psa-baseline"))
        .expect_err("baseline refuses the agent");
    for why in ["hostPID", "hostPath", "capabilities"] {
        assert!(
            refused.contains(why),
            "baseline refusal names {why}: {refused}"
        );
    }
    assert!(
        !refused.contains("privileged"),
        "agent is not privileged: {refused}"
    );
    try_pod(pod_of(&d, "DaemonSet", AGENT, "psa-privileged"))
        .expect("agent pod accepted in a privileged namespace");
    let full = docs(&render(&["-f", &all_on()]));
    try_pod(pod_of(&full, "DaemonSet", AGENT, "psa-privileged"))
        .expect("agent pod with every option accepted");

    // RBAC, for real: apply the roles and ask the apiserver what the
    // service accounts may do.
    let rbac: Vec<Value> = d
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .cloned()
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": rbac});
    let f = write(dir.path(), "rbac.json", &list.to_string());
    cp.kubectl_ok(&["apply", "--server-side", "-f", &f])
        .expect("RBAC applies");
    let op_yes: &[&[&str]] = &[
        &["watch", "tracerprograms.bpfleet.dev"],
        &[
            "patch",
            "tracerprograms.bpfleet.dev",
            "--subresource=status",
        ],
        &[
            "update",
            "tracerprograms.bpfleet.dev",
            "--subresource=finalizers",
        ],
        &[
            "patch",
            "tracerpolicies.bpfleet.dev",
            "--subresource=status",
        ],
        &["list", "nodes"],
        &["watch", "pods", "-n", NS],
        &["create", "controllerrevisions.apps", "-n", NS],
        &["deletecollection", "controllerrevisions.apps", "-n", NS],
        &["get", "configmaps", "-n", "team-a"],
        &["create", "events.events.k8s.io", "-n", "default"],
        &["patch", "events", "-n", "default"],
        &["create", "leases.coordination.k8s.io", "-n", NS],
        &[
            "update",
            "leases.coordination.k8s.io/bpfleet-operator",
            "-n",
            NS,
        ],
    ];
    let op_no: &[&[&str]] = &[
        &["get", "secrets", "-n", NS],
        &["list", "configmaps", "-A"],
        &["watch", "pods", "-n", "default"],
        &["create", "controllerrevisions.apps", "-n", "default"],
        &["patch", "tracerpolicies.bpfleet.dev"],
        &[
            "update",
            "leases.coordination.k8s.io/kube-scheduler",
            "-n",
            NS,
        ],
        &["create", "leases.coordination.k8s.io", "-n", "kube-system"],
        &["delete", "pods", "-n", NS],
        &["create", "tracerprograms.bpfleet.dev"],
        &["delete", "tracerprograms.bpfleet.dev"],
        &["patch", "nodes"],
        &["create", "pods", "--subresource=exec", "-n", NS],
    ];
    for a in op_yes {
        assert!(can_i(&cp, OPERATOR, a), "operator may not {a:?}");
    }
    for a in op_no {
        assert!(!can_i(&cp, OPERATOR, a), "operator may {a:?}");
    }
    for a in [
        &["watch", "pods", "-A"][..],
        &["list", "namespaces"],
        &["get", "secrets", "-n", NS],
        &["get", "configmaps", "-n", NS],
        &["patch", "pods", "-n", NS],
        &["list", "nodes"],
        &["list", "tracerprograms.bpfleet.dev"],
    ] {
        assert!(!can_i(&cp, AGENT, a), "agent may {a:?}");
    }
}

// -------------------------------------------------- operations script

/// `deploy/bpfleet-ops` against the control plane, with the harness's helm
/// and kubectl.
fn ops(cp: &ControlPlane, home: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(workspace_root().join("deploy/bpfleet-ops"))
        .args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("HELM", binary_dir().join("helm"))
        .env("KUBECTL", binary_dir().join("kubectl"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("running bpfleet-ops");
    (out.status.success(), text(&out))
}

#[tokio::test]
async fn ops_script_deploys_upgrades_and_uninstalls_on_a_real_apiserver() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let ns = "ops-test";
    let base = ["--namespace", ns, "--release", "bpfleet"];
    let run = |args: &[&str]| {
        let mut all = base.to_vec();
        all.extend_from_slice(args);
        ops(&cp, home, &all)
    };

    let (ok, help) = run(&["--help"]);
    assert!(ok, "{help}");
    for word in [
        "check",
        "deploy",
        "upgrade",
        "uninstall",
        "status",
        "logs operator|agent",
        "port-forward operator|agent",
        "--namespace",
        "--release",
        "--values",
        "--dry-run",
        "--skip-monitoring",
    ] {
        assert!(help.contains(word), "--help does not mention {word}");
    }

    // Prerequisites fail with the reason and the way out.
    let out = Command::new("bash")
        .arg(workspace_root().join("deploy/bpfleet-ops"))
        .args(["check"])
        .env("KUBECONFIG", home.join("missing-kubeconfig"))
        .env("HELM", binary_dir().join("helm"))
        .env("KUBECTL", binary_dir().join("kubectl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot reach the cluster"),
        "{}",
        text(&out)
    );
    let all_on = all_on();
    let (ok, out) = run(&["check", "-f", &all_on]);
    assert!(!ok, "monitoring and cert-manager kinds are not served here");
    for why in [
        "ServiceMonitor: install the Prometheus Operator CRDs, or pass --skip-monitoring",
        "PrometheusRule",
        "Certificate: install cert-manager",
    ] {
        assert!(out.contains(why), "check does not say {why}:\n{out}");
    }
    let (ok, out) = run(&["check", "-f", &all_on, "--skip-monitoring"]);
    assert!(
        !ok && !out.contains("ServiceMonitor") && out.contains("cert-manager"),
        "{out}"
    );

    // A dry run changes nothing.
    let (ok, out) = run(&["deploy", "--dry-run"]);
    assert!(ok, "{out}");
    assert!(out.contains("--dry-run=server"), "{out}");
    assert!(
        cp.kubectl_ok(&["get", "namespace", ns]).is_err(),
        "dry run created the namespace"
    );

    let (ok, out) = run(&["deploy", "--no-wait"]);
    assert!(ok, "{out}");
    let labels = cp
        .kubectl_ok(&["get", "namespace", ns, "-o", "jsonpath={.metadata.labels}"])
        .unwrap();
    assert!(
        labels.contains("\"pod-security.kubernetes.io/enforce\":\"privileged\""),
        "{labels}"
    );
    cp.kubectl_ok(&[
        "-n",
        ns,
        "get",
        "deployment/bpfleet-operator",
        "daemonset/bpfleet-agent",
    ])
    .expect("workloads created");
    cp.kubectl_ok(&["get", "crd", "tracerprograms.bpfleet.dev"])
        .expect("CRDs installed");
    let cert = || {
        cp.kubectl_ok(&[
            "-n",
            ns,
            "get",
            "secret",
            "bpfleet-agent-tls",
            "-o",
            "jsonpath={.data.tls\\.crt}",
        ])
        .unwrap()
    };
    let first = cert();
    assert!(first.len() > 100);

    // Upgrade keeps the certificates (looked up) and applies new values.
    let (ok, out) = run(&["upgrade", "--no-wait", "--set", "operator.logLevel=debug"]);
    assert!(ok, "{out}");
    assert_eq!(cert(), first, "upgrade regenerated the mTLS material");
    let env = cp
        .kubectl_ok(&[
            "-n",
            ns,
            "get",
            "deployment/bpfleet-operator",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env}",
        ])
        .unwrap();
    assert!(
        env.contains("\"name\":\"RUST_LOG\",\"value\":\"debug\""),
        "{env}"
    );
    let (ok, out) = ops(
        &cp,
        home,
        &["-n", ns, "-r", "other", "upgrade", "--no-wait"],
    );
    assert!(
        !ok && out.contains("release other is not installed"),
        "{out}"
    );

    let (ok, out) = run(&["status"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("REVISION: 2") && out.contains("no TracerPrograms"),
        "{out}"
    );
    // No kubelet here: no pods, and logs say so instead of hanging.
    let (ok, out) = run(&["logs", "operator"]);
    assert!(
        !ok && out.contains("no operator pod of release bpfleet"),
        "{out}"
    );
    let (ok, out) = run(&["logs", "agent", "--node", "worker-1"]);
    assert!(
        !ok && out.contains("no agent of release bpfleet on node worker-1"),
        "{out}"
    );

    // CRDs outlive the release while programs exist.
    cp.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        &workspace_root()
            .join("examples/syscall-counter-immediate.yaml")
            .to_string_lossy(),
    ])
    .unwrap();
    let (ok, out) = run(&["uninstall", "--delete-crds"]);
    assert!(!ok && out.contains("TracerProgram(s) exist"), "{out}");
    let (ok, out) = run(&["uninstall"]);
    assert!(ok, "{out}");
    assert!(
        cp.kubectl_ok(&["-n", ns, "get", "deployment/bpfleet-operator"])
            .is_err()
    );
    cp.kubectl_ok(&["get", "tracerprogram", "syscall-counter"])
        .expect("programs stay");
    let (ok, _) = run(&["status"]);
    assert!(!ok, "release gone");
}

// -------------------------------------------------- GitOps examples

fn yaml_docs(rel: &str) -> Vec<Value> {
    docs(&read(rel))
}

/// Renders the chart with `values` (a JSON object) as a values file.
fn render_with(values: &Value) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("values.json");
    std::fs::write(&f, values.to_string()).unwrap();
    docs(&render(&["-f", f.to_str().unwrap()]))
}

#[test]
fn gitops_examples_point_at_what_the_repository_holds() {
    let root = workspace_root();
    let exists = |p: &str| root.join(p.trim_start_matches("./")).exists();
    for file in [
        "deploy/argocd/application-bpfleet.yaml",
        "deploy/argocd/application-programs.yaml",
    ] {
        let app = &yaml_docs(file)[0];
        assert_eq!(app["apiVersion"], "argoproj.io/v1alpha1", "{file}");
        assert_eq!(app["kind"], "Application", "{file}");
        let path = app["spec"]["source"]["path"].as_str().unwrap();
        assert!(exists(path), "{file}: {path} does not exist");
        if let Some(values) = app["spec"]["source"]["helm"]["valuesObject"].as_object() {
            assert_eq!(path, "charts/bpfleet");
            let d = render_with(&Value::Object(values.clone()));
            assert!(
                kind(&d, "Secret").is_empty(),
                "{file}: Argo CD renders without lookups; Helm-generated certificates would change on every sync"
            );
        }
        if let Some(k) = app["spec"]["source"]["kustomize"].as_object() {
            assert_eq!(
                k["commonAnnotations"]["bpfleet.dev/source-commit"], "${ARGOCD_APP_REVISION}",
                "{file}: programs carry their commit"
            );
            assert_eq!(k["commonAnnotationsEnvsubst"], true);
            assert!(exists(&format!("{path}/kustomization.yaml")));
        }
    }
    let source = &yaml_docs("deploy/flux/gitrepository.yaml")[0];
    assert_eq!(source["apiVersion"], "source.toolkit.fluxcd.io/v1");
    let ks = yaml_docs("deploy/flux/kustomizations.yaml");
    assert_eq!(ks.len(), 2);
    for k in &ks {
        assert_eq!(k["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
        let path = k["spec"]["path"].as_str().unwrap();
        assert!(
            exists(path),
            "Flux Kustomization path {path} does not exist"
        );
        assert_eq!(k["spec"]["sourceRef"]["name"], source["metadata"]["name"]);
        assert_eq!(
            k["spec"]["wait"], true,
            "health of what it applies is waited for"
        );
    }
    let programs = ks
        .iter()
        .find(|k| k["metadata"]["name"] == "bpfleet-programs")
        .unwrap();
    assert_eq!(
        programs["spec"]["dependsOn"][0]["name"],
        ks.iter()
            .find(|k| k["metadata"]["name"] != "bpfleet-programs")
            .unwrap()["metadata"]["name"]
    );
    let hr = &yaml_docs("deploy/flux/release/helmrelease.yaml")[0];
    assert_eq!(hr["apiVersion"], "helm.toolkit.fluxcd.io/v2");
    let chart = hr["spec"]["chart"]["spec"]["chart"].as_str().unwrap();
    assert!(exists(chart), "{chart}");
    assert_eq!(
        hr["spec"]["upgrade"]["crds"], "CreateReplace",
        "CRDs follow upgrades"
    );
    // The HelmRelease's values are valid for the chart (the schema would
    // refuse them at reconcile time otherwise).
    render_with(&hr["spec"]["values"]);
    // The programs directory lists files that exist.
    let kz = &yaml_docs("deploy/gitops/programs/kustomization.yaml")[0];
    for r in strs(&kz["resources"]) {
        assert!(exists(&format!("deploy/gitops/programs/{r}")), "{r}");
    }
}

// -------------------------------------------------- image contents

/// Shared libraries in gcr.io/distroless/cc-debian12 (glibc, libgcc,
/// libstdc++, libgomp: the image's documented contents).
const DISTROLESS_CC: &[&str] = &[
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libgomp.so.1",
];

/// Builds the operator and agent binaries (one cargo invocation, so shared
/// dependencies are built once) and returns their paths by binary name, as
/// cargo reports them.
fn build_binaries() -> BTreeMap<String, PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--message-format=json"])
        .args(["-p", "bpfleet-operator", "--bin", OPERATOR])
        .args(["-p", "bpfleet-agent", "--bin", AGENT])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo build: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            let exe = m["executable"].as_str()?;
            Some((
                m["target"]["name"].as_str()?.to_string(),
                PathBuf::from(exe),
            ))
        })
        .collect()
}

/// DT_NEEDED entries of an ELF file.
fn needed(path: &Path) -> BTreeSet<String> {
    let out = Command::new("readelf")
        .args(["-d", path.to_str().unwrap()])
        .output()
        .expect("readelf (binutils) is installed");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .map(|l| {
            l.split('[')
                .nth(1)
                .unwrap()
                .trim_end_matches(']')
                .to_string()
        })
        .collect()
}

#[test]
fn images_carry_every_library_the_binaries_need() {
    let binaries = build_binaries();
    for (file, bin) in [
        ("Dockerfile.operator", OPERATOR),
        ("Dockerfile.agent", AGENT),
    ] {
        let df = read(file);
        // Libraries the Dockerfile copies from the build stage.
        let copied: BTreeSet<String> = df
            .lines()
            .filter(|l| l.contains("cp -L "))
            .flat_map(|l| l.split_whitespace())
            .filter(|w| w.contains(".so"))
            .map(|w| w.rsplit('/').next().unwrap().to_string())
            .collect();
        let mut missing = Vec::new();
        let exe = binaries
            .get(bin)
            .unwrap_or_else(|| panic!("cargo built no {bin}: {binaries:?}"));
        let mut queue: Vec<String> = needed(exe).into_iter().collect();
        let mut seen = BTreeSet::new();
        while let Some(lib) = queue.pop() {
            if !seen.insert(lib.clone()) || DISTROLESS_CC.contains(&lib.as_str()) {
                continue;
            }
            if !copied.contains(&lib) {
                missing.push(lib.clone());
            }
            // What a copied library needs in turn (same Debian release).
            let host = Path::new("/usr/lib/x86_64-linux-gnu").join(&lib);
            if host.exists() {
                queue.extend(needed(&host));
            }
        }
        assert!(
            missing.is_empty(),
            "{file}: the final image lacks {missing:?} which {bin} loads"
        );
        for lib in &copied {
            assert!(
                seen.contains(lib),
                "{file} copies {lib}, which {bin} does not load"
            );
        }
    }
}

// -------------------------------------------------- the real agent

/// A child process, killed and reaped on drop; then the pin root it used
/// (if any) is removed, also when the test failed.
struct Running(std::process::Child, Option<std::path::PathBuf>);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(p) = &self.1 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:port: (status, body), None when nothing answers.
/// GET with retries: under a loaded CI machine a debug-build agent may take
/// a while to render its metrics.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    for attempt in 0..5 {
        if let Some(r) = http_get_once(port, path) {
            return Some(r);
        }
        std::thread::sleep(std::time::Duration::from_millis(500 * (attempt + 1)));
    }
    None
}

fn http_get_once(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// An mTLS handshake with openssl as the client, checking the server's
/// certificate for `name` against `ca`. Ok when the server keeps the
/// connection (it accepted the client certificate), Err(openssl's account)
/// when it ends it.
fn tls_client(port: u16, ca: &str, cert: Option<(&str, &str)>, name: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-CAfile",
            ca,
            "-verify_hostname",
            name,
            "-verify_return_error",
        ])
        .args(["-alpn", "h2", "-quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
    if let Some((c, k)) = cert {
        cmd.args(["-cert", c, "-key", k]);
    }
    let mut child = Running(cmd.spawn().expect("openssl is installed"), None);
    for _ in 0..30 {
        if let Ok(Some(_)) = child.0.try_wait() {
            return Err(std::fs::read_to_string(&err).unwrap_or_default());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Writes the files a workload's container finds under /etc/bpfleet, as
/// the chart mounts them (volume by volume, key by key), below `root/etc`.
/// Secrets come from `tls` (a render in helm TLS mode; cert-manager writes
/// Secrets of the same names and keys).
fn materialize_mounts(d: &[Value], tls: &[Value], k: &str, workload: &str, root: &Path) {
    use base64::Engine;
    let c = container(d, workload, k);
    let volumes = named(d, k, workload)["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .clone();
    let put = |rel: String, bytes: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    };
    for m in c["volumeMounts"].as_array().unwrap() {
        let Some(sub) = m["mountPath"]
            .as_str()
            .unwrap()
            .strip_prefix("/etc/bpfleet/")
        else {
            continue;
        };
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
        if let Some(secret) = v["secret"]["secretName"].as_str() {
            for item in v["secret"]["items"].as_array().unwrap() {
                let (key, path) = (
                    item["key"].as_str().unwrap(),
                    item["path"].as_str().unwrap(),
                );
                let b64 = named(tls, "Secret", secret)["data"][key].as_str().unwrap();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap();
                put(format!("etc/{sub}/{path}"), &bytes);
            }
        } else if let Some(cm) = v["configMap"]["name"].as_str() {
            for (file, text) in named(d, "ConfigMap", cm)["data"].as_object().unwrap() {
                put(
                    format!("etc/{sub}/{file}"),
                    text.as_str().unwrap().as_bytes(),
                );
            }
        }
    }
}

/// The agent started with the arguments `d` renders, files from
/// [`materialize_mounts`] under `root`, addresses on loopback; returns the
/// process, its gRPC and metrics ports and its pin root once /api/health
/// answers 200 (with the body).
fn start_agent(
    d: &[Value],
    tls: &[Value],
    exe: &Path,
    root: &Path,
) -> (Running, u16, u16, String, Value) {
    materialize_mounts(d, tls, "DaemonSet", AGENT, root);
    std::fs::create_dir_all(root.join("pods")).unwrap();
    let tmp = root.to_string_lossy().into_owned();
    let agent = container(d, AGENT, "DaemonSet");
    let pin_root = format!(
        "/sys/fs/bpf/bpfleet-chart-test-{}-{}",
        std::process::id(),
        free_port()
    );
    let (grpc, metrics, otlp) = (free_port(), free_port(), free_port());
    let args: Vec<String> = strs(&agent["args"])
        .into_iter()
        .map(|a| {
            let a = a
                .replace("/sys/fs/bpf/bpfleet", &pin_root)
                .replace("=/etc/bpfleet/", &format!("={tmp}/etc/"))
                .replace("=/var/lib/bpfleet/", &format!("={tmp}/state/"))
                .replace("=/run/bpfleet/", &format!("={tmp}/run/"))
                .replace("=/var/log/pods", &format!("={tmp}/pods"))
                .replace(
                    &format!("0.0.0.0:{}", port_of(agent, "grpc")),
                    &format!("127.0.0.1:{grpc}"),
                )
                .replace(
                    &format!("0.0.0.0:{}", port_of(agent, "metrics")),
                    &format!("127.0.0.1:{metrics}"),
                );
            match a.split_once('=') {
                Some(("--otlp-endpoint", _)) => format!("--otlp-endpoint=http://127.0.0.1:{otlp}"),
                _ => a,
            }
        })
        .collect();
    for a in &args {
        assert!(
            !a.contains("0.0.0.0") && !a.contains("=/etc/"),
            "not rewritten: {a}"
        );
    }
    let log = root.join("agent.log");
    let child = Command::new(exe)
        .args(&args)
        .env("NODE_NAME", "chart-test")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut proc_ = Running(child, Some(std::path::PathBuf::from(&pin_root)));
    let probe = agent["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    for _ in 0..150 {
        if let Ok(Some(status)) = proc_.0.try_wait() {
            panic!(
                "the agent exited ({status}) with the chart's arguments {args:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if let Some((200, body)) = http_get(metrics, probe) {
            let health = serde_json::from_str(&body).unwrap();
            return (proc_, grpc, metrics, pin_root, health);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!(
        "{probe} never answered 200:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The agent binary, started exactly with the arguments the chart renders
/// (everything on), paths moved to a temporary directory and addresses to
/// loopback, and the Helm-generated certificates: it starts, reports ready
/// on the probe path, exports only metrics the tests know, accepts the
/// operator's client certificate and refuses any other. Needs root and
/// bpffs, like the agent's own tests.
#[test]
fn the_agent_runs_with_the_charts_arguments() {
    use base64::Engine;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test runs the real agent: run it as root (as CI does)"
    );
    let exe = build_binaries().remove(AGENT).expect("agent built");
    let helm_tls = docs(&render(&[]));
    let full = docs(&render(&["-f", &all_on()]));
    let dir = tempfile::tempdir().unwrap();
    let (agent_proc, grpc, metrics, pin_root, health) =
        start_agent(&full, &helm_tls, &exe, dir.path());
    assert_eq!(health["ready"], true, "{health}");
    assert_eq!(health["agent"]["pin_root"], pin_root.as_str());
    let agent = container(&full, AGENT, "DaemonSet");
    // What the operator holds: its certificate and the agents' CA.
    let secret = |name: &str, key: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(
                named(&helm_tls, "Secret", name)["data"][key]
                    .as_str()
                    .unwrap(),
            )
            .unwrap()
    };
    let put = |rel: &str, bytes: &[u8]| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p.to_string_lossy().into_owned()
    };
    let agent_ca = put(
        "client/agent-ca.crt",
        &secret("bpfleet-agent-tls", "ca.crt"),
    );
    let op_crt = put("client/op.crt", &secret("bpfleet-operator-tls", "tls.crt"));
    let op_key = put("client/op.key", &secret("bpfleet-operator-tls", "tls.key"));
    let agent_crt = put("client/agent.crt", &secret("bpfleet-agent-tls", "tls.crt"));
    let agent_key = put("client/agent.key", &secret("bpfleet-agent-tls", "tls.key"));

    // The liveness path, and only metrics the other tests know about.
    let live = agent["livenessProbe"]["httpGet"]["path"].as_str().unwrap();
    let (status, text) = http_get(metrics, live).expect("metrics answer");
    assert_eq!(status, 200);
    let known = agent_metrics();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut w = line.split_whitespace().skip(2);
        let (name, kind) = (w.next().unwrap(), w.next().unwrap());
        let sample = match kind {
            "counter" => format!("{name}_total"),
            "histogram" => format!("{name}_count"),
            _ => name.to_string(),
        };
        assert!(
            known.contains(&sample),
            "the agent exports {sample}, unknown to the chart tests"
        );
    }

    // mTLS with the chart's material: the operator's certificate is
    // accepted, the agent's own (another CA) and none are refused, and the
    // agent's certificate carries the name the operator checks.
    let name = flag(
        &strs(&container(&full, OPERATOR, "Deployment")["args"]),
        "--agent-tls-name",
    );
    tls_client(grpc, &agent_ca, Some((&op_crt, &op_key)), &name)
        .unwrap_or_else(|e| panic!("operator certificate refused: {e}"));
    let e = tls_client(grpc, &agent_ca, Some((&agent_crt, &agent_key)), &name)
        .expect_err("an agent certificate drives another agent");
    assert!(e.contains("unknown ca"), "{e}");
    tls_client(grpc, &agent_ca, None, &name).expect_err("no client certificate accepted");
    let e = tls_client(
        grpc,
        &agent_ca,
        Some((&op_crt, &op_key)),
        "bpfleet-operator",
    )
    .expect_err("agent certificate valid for another name");
    assert!(e.contains("verify") || e.contains("mismatch"), "{e}");

    drop(agent_proc);
    let _ = std::fs::remove_dir(&pin_root);
}

/// The operator binary, started with the arguments the chart renders and
/// the files it mounts, acting as its ServiceAccount (kubeconfig
/// impersonation) with the chart's RBAC applied for real, drives the real
/// agent (started the same way) over the chart's mTLS: it finds the agent
/// through the node annotation, writes status and finalizer, holds its
/// Lease, keeps a revision snapshot, and is refused nothing by the
/// apiserver. Needs root and bpffs (the agent).
#[tokio::test]
async fn operator_drives_the_agent_with_the_charts_arguments_and_rbac() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "runs the real agent: run as root"
    );
    let bins = build_binaries();
    let d = docs(&render(&[]));
    let dir = tempfile::tempdir().unwrap();
    let (_agent, grpc, _metrics, pin_root, _) =
        start_agent(&d, &d, &bins[AGENT], &dir.path().join("agent"));

    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs");
    cp.kubectl_ok(&["create", "namespace", NS]).unwrap();
    let rbac: Vec<Value> = d
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .cloned()
        .collect();
    let f = write(
        dir.path(),
        "rbac.json",
        &json!({"apiVersion": "v1", "kind": "List", "items": rbac}).to_string(),
    );
    cp.kubectl_ok(&["apply", "--server-side", "-f", &f])
        .expect("RBAC applies");
    // A node whose agent is the one started above.
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "chart-node", "labels": {"kubernetes.io/os": "linux"},
                     "annotations": {"bpfleet.dev/agent-endpoint": format!("https://127.0.0.1:{grpc}")}},
    });
    let f = write(dir.path(), "node.json", &node.to_string());
    cp.kubectl_ok(&["apply", "--server-side", "-f", &f])
        .unwrap();

    // The operator, as its ServiceAccount.
    let sa = format!("system:serviceaccount:{NS}:{OPERATOR}");
    let kc = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    let kc = kc.replacen(
        "    client-key-data:",
        &format!("    as: {sa}\n    client-key-data:"),
        1,
    );
    let kubeconfig = write(dir.path(), "operator.kubeconfig", &kc);
    let op_root = dir.path().join("operator");
    materialize_mounts(&d, &d, "Deployment", OPERATOR, &op_root);
    let op = container(&d, OPERATOR, "Deployment");
    let metrics = free_port();
    let root = op_root.to_string_lossy().into_owned();
    let args: Vec<String> = strs(&op["args"])
        .into_iter()
        .map(|a| {
            a.replace("$(POD_NAMESPACE)", NS)
                .replace("$(POD_NAME)", "bpfleet-operator-0")
                .replace("=/etc/bpfleet/", &format!("={root}/etc/"))
                .replace(
                    &format!("0.0.0.0:{}", port_of(op, "metrics")),
                    &format!("127.0.0.1:{metrics}"),
                )
        })
        .collect();
    let log = dir.path().join("operator.log");
    let child = Command::new(&bins[OPERATOR])
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", NS)
        .env("POD_NAME", "bpfleet-operator-0")
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut operator = Running(child, None);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = op["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    let mut up = false;
    for _ in 0..150 {
        if let Ok(Some(s)) = operator.0.try_wait() {
            panic!("the operator exited ({s}) with {args:?}:\n{}", log_text());
        }
        if matches!(http_get(metrics, ready), Some((200, _))) {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(up, "{ready} never answered 200:\n{}", log_text());

    // A program whose object is not on this "node": the agent refuses the
    // load, so the failure the status reports comes from the agent itself
    // (an mTLS failure would make it unreachable instead).
    cp.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        &workspace_root()
            .join("examples/syscall-counter-immediate.yaml")
            .to_string_lossy(),
    ])
    .unwrap();
    let mut last = Value::Null;
    for _ in 0..120 {
        let out = cp
            .kubectl_ok(&["get", "tracerprogram", "syscall-counter", "-o", "json"])
            .unwrap();
        last = serde_json::from_str(&out).unwrap();
        if last["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("chart-node"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // The agent's own words, carried back over mTLS into status.
    let message = last["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(
            "chart-node: AgentError: reading /var/lib/bpfleet/objects/syscall_counter.bpf.o"
        ),
        "no refusal from the agent in status: {last}\n{}",
        log_text()
    );
    assert!(!message.contains("Unreachable"), "{message}");
    assert!(
        last["status"]["observedGeneration"].is_i64(),
        "status written: {last}"
    );
    assert!(
        !strs(&last["metadata"]["finalizers"]).is_empty(),
        "finalizer added: {last}"
    );
    let holder = cp
        .kubectl_ok(&[
            "-n",
            NS,
            "get",
            "lease",
            "bpfleet-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .expect("the operator holds its Lease");
    assert_eq!(holder, "bpfleet-operator-0");
    let snapshots = cp
        .kubectl_ok(&["-n", NS, "get", "controllerrevisions", "-o", "name"])
        .unwrap();
    assert!(!snapshots.trim().is_empty(), "revision snapshot kept");
    let text = log_text();
    assert!(
        !text.contains("forbidden") && !text.contains("Forbidden"),
        "the apiserver refused the operator something its code does:\n{text}"
    );
    drop(operator);
    let _ = std::fs::remove_dir_all(&pin_root);
}
