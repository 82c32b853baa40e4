//! Shared helpers of the chart tests: helm and the other tools from the
//! control plane's bin directory (helm with private config and cache),
//! rendering the chart, reading the rendered documents (kinds, named
//! objects, containers, flags, ports) and files of the repository. Knows nothing of the agent's or operator's code
//! ([`crate::code`]) and starts no long-running process
//! ([`crate::processes`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bpfleet_e2e::{binary_dir, workspace_root};
use serde::Deserialize;
use serde_json::Value;

pub const RELEASE: &str = "bpfleet";
pub const NS: &str = "bpfleet-system";
pub const OPERATOR: &str = "bpfleet-operator";
pub const AGENT: &str = "bpfleet-agent";

pub fn chart() -> PathBuf {
    workspace_root().join("charts/bpfleet")
}

pub fn all_on() -> String {
    chart()
        .join("ci/all-on-values.yaml")
        .to_string_lossy()
        .into_owned()
}

pub fn read(rel: &str) -> String {
    let p = workspace_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

/// helm from `.cache/controlplane/bin`, with its config, cache and data in
/// a private directory (nothing read from or written to $HOME).
pub fn helm(args: &[&str]) -> Output {
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

/// A tool the control plane's build puts beside helm (promtool, amtool):
/// its path, or a panic that says how to build it.
pub fn tool(name: &str) -> PathBuf {
    let bin = binary_dir().join(name);
    assert!(
        bin.is_file(),
        "{} not found; build it with `bash e2e/controlplane/build.sh` (or `scripts/setup.sh`)",
        bin.display()
    );
    bin
}

/// Runs `tool` with `args` in `dir`.
pub fn run_tool(name: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(tool(name))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `helm template` of the chart (CRDs included) with extra arguments.
pub fn render(extra: &[&str]) -> String {
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

pub fn render_fails(extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", RELEASE, chart.to_str().unwrap(), "-n", NS];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(!out.status.success(), "helm template {extra:?} succeeded");
    text(&out)
}

pub fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == k).collect()
}

pub fn named<'a>(docs: &'a [Value], k: &str, name: &str) -> &'a Value {
    kind(docs, k)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {k} {name} rendered"))
}

pub fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Pod templates of every workload, with the workload's name.
pub fn pod_specs(docs: &[Value]) -> Vec<(String, &Value)> {
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

pub fn container<'a>(docs: &'a [Value], workload: &str, k: &str) -> &'a Value {
    &named(docs, k, workload)["spec"]["template"]["spec"]["containers"][0]
}

/// `--flag=value` / `--flag` arguments as (flag, value).
pub fn flags(args: &[String]) -> Vec<(String, Option<String>)> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| match a.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (a.clone(), None),
        })
        .collect()
}

pub fn flag(args: &[String], name: &str) -> String {
    flags(args)
        .into_iter()
        .find(|(f, _)| f == name)
        .and_then(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name} not passed: {args:?}"))
}

pub fn port_of(c: &Value, name: &str) -> u64 {
    c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

pub fn port_in(addr: &str) -> u64 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// The text between `start` and the next `end` in `hay`.
pub fn between<'a>(hay: &'a str, start: &str, end: &str) -> &'a str {
    let i = hay
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not found"));
    let rest = &hay[i + start.len()..];
    &rest[..rest
        .find(end)
        .unwrap_or_else(|| panic!("{end:?} not found"))]
}

/// Writes `text` to `dir/name`; returns the path as a string.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// Every `.rs` file under `rel` (a directory of the workspace), recursively,
/// with its text, in path order; paths relative to `rel`.
pub fn rust_sources(rel: &str) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
                out.push((p, text));
            }
        }
    }
    let dir = workspace_root().join(rel);
    let mut out = Vec::new();
    walk(&dir, &mut out);
    assert!(!out.is_empty(), "no Rust source under {rel}");
    out.into_iter()
        .map(|(p, text)| (p.strip_prefix(&dir).unwrap().to_path_buf(), text))
        .collect()
}

/// `cargo metadata --no-deps` of the workspace (offline).
pub fn workspace_metadata() -> Value {
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
    serde_json::from_slice(&out.stdout).unwrap()
}
