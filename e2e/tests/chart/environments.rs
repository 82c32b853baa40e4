//! The per-environment values files (`charts/bpfleet/values-{dev,staging,
//! production}.yaml`): each passes `helm lint --strict` and the values
//! schema, sets only values the chart consumes (taking any one away
//! changes what renders), renders rules `promtool check rules` accepts and
//! alert routing `amtool check-config` accepts; and, on a real
//! kube-apiserver (server-side dry run, the stand-in CRDs of
//! `stand-in-crds.yaml`), each environment's chart, as Helm renders it
//! and as the Flux overlay merges it, the Flux overlay itself (HelmRelease
//! and values ConfigMap, built by kubectl's kustomize) and the
//! environment's programs and TracerPolicy are accepted.

use std::path::Path;

use bpfleet_e2e::{ControlPlane, workspace_root};
use serde_json::Value;

use crate::alerting::{alertmanager_yml, promtool_check_rules};
use crate::support::{NS, chart, docs, helm, kind, render, run_tool, text, write};

pub const ENVS: [&str; 3] = ["dev", "staging", "production"];

/// `charts/bpfleet/values-<env>.yaml`, as a path string.
pub fn env_values(env: &str) -> String {
    chart()
        .join(format!("values-{env}.yaml"))
        .to_string_lossy()
        .into_owned()
}

/// Every leaf of a values tree (a scalar or a list) by its key path.
fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v.as_object() {
        Some(o) if !o.is_empty() => {
            for (k, child) in o {
                path.push(k.clone());
                leaves(child, path, out);
                path.pop();
            }
        }
        _ => out.push(path.clone()),
    }
}

fn without(v: &Value, path: &[String]) -> Value {
    let mut v = v.clone();
    let mut at = &mut v;
    for k in &path[..path.len() - 1] {
        at = &mut at[k.as_str()];
    }
    at.as_object_mut()
        .unwrap()
        .remove(path.last().unwrap().as_str());
    v
}

/// `helm template` with certManager TLS (renders the same twice: no
/// generated certificates) and the given values file: the documents, or
/// the error.
fn render_values(file: &str) -> Result<Vec<Value>, String> {
    let chart = chart();
    let out = helm(&[
        "template",
        "bpfleet",
        chart.to_str().unwrap(),
        "--namespace",
        NS,
        "--set",
        "tls.mode=certManager",
        "-f",
        file,
    ]);
    if out.status.success() {
        Ok(docs(&String::from_utf8(out.stdout).unwrap()))
    } else {
        Err(text(&out))
    }
}

#[test]
fn environment_values_lint_and_set_only_what_the_chart_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let chart = chart();
    for env in ENVS {
        let file = env_values(env);
        let out = helm(&[
            "lint",
            "--strict",
            chart.to_str().unwrap(),
            "-n",
            NS,
            "-f",
            &file,
        ]);
        assert!(
            out.status.success() && text(&out).contains("0 chart(s) failed"),
            "helm lint values-{env}.yaml: {}",
            text(&out)
        );
        let values: Value = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("values-{env}.yaml: {e}"));
        let whole = render_values(&file).unwrap_or_else(|e| panic!("values-{env}.yaml: {e}"));
        let mut all = Vec::new();
        leaves(&values, &mut Vec::new(), &mut all);
        assert!(!all.is_empty(), "values-{env}.yaml sets nothing");
        for path in all {
            let rest = write(
                dir.path(),
                "rest.json",
                &without(&values, &path).to_string(),
            );
            // A render that fails without the value consumes it too (a
            // receiver the AlertmanagerConfig needs, say).
            if let Ok(d) = render_values(&rest) {
                assert!(
                    d != whole,
                    "values-{env}.yaml: {} changes nothing the chart renders (ignored, or the default)",
                    path.join(".")
                );
            }
        }

        // What each environment renders for monitoring passes the real
        // tools: promtool on its rules, amtool on its routing.
        let d = docs(&render(&["-f", &file]));
        let rule = kind(&d, "PrometheusRule");
        assert_eq!(rule.len(), 1, "{env}: alerts on in every environment");
        let env_dir = dir.path().join(env);
        std::fs::create_dir_all(&env_dir).unwrap();
        promtool_check_rules(rule[0], &env_dir);
        for amc in kind(&d, "AlertmanagerConfig") {
            let f = write(
                &env_dir,
                "alertmanager.yml",
                &serde_yaml::to_string(&alertmanager_yml(amc)).unwrap(),
            );
            let out = run_tool("amtool", &["check-config", &f], &env_dir);
            assert!(
                out.status.success(),
                "{env}: amtool check-config: {}",
                text(&out)
            );
        }
    }
    // Production pages; dev does not route alerts at all.
    let prod = docs(&render(&["-f", &env_values("production")]));
    let amc = kind(&prod, "AlertmanagerConfig");
    assert!(amc[0]["spec"]["receivers"][0]["pagerdutyConfigs"].is_array());
    assert!(
        kind(
            &docs(&render(&["-f", &env_values("dev")])),
            "AlertmanagerConfig"
        )
        .is_empty()
    );
}

/// `kubectl kustomize` of a directory of the repository.
pub fn kustomize(rel: &str) -> String {
    let root = workspace_root();
    let out = run_tool(
        "kubectl",
        &["kustomize", &root.join(rel).to_string_lossy()],
        &root,
    );
    assert!(out.status.success(), "kustomize {rel}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The chart values a Flux overlay gives its HelmRelease, in Flux's order:
/// the chart's valuesFiles, then valuesFrom (the overlay's ConfigMap),
/// then the HelmRelease's own values. Returns `-f` arguments for helm.
pub fn flux_values(env: &str, dir: &Path) -> Vec<String> {
    let built = docs(&kustomize(&format!("deploy/flux/environments/{env}")));
    let hr = kind(&built, "HelmRelease")[0];
    let mut args = Vec::new();
    for f in hr["spec"]["chart"]["spec"]["valuesFiles"]
        .as_array()
        .expect("valuesFiles")
    {
        let p = workspace_root().join(f.as_str().unwrap().trim_start_matches("./"));
        assert!(p.is_file(), "{env}: valuesFiles names {}", p.display());
        args.extend(["-f".to_string(), p.to_string_lossy().into_owned()]);
    }
    for from in hr["spec"]["valuesFrom"].as_array().expect("valuesFrom") {
        assert_eq!(from["kind"], "ConfigMap");
        let cm = kind(&built, "ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["name"] == from["name"])
            .unwrap_or_else(|| panic!("{env}: valuesFrom names {}, not built", from["name"]));
        let key = from["valuesKey"].as_str().unwrap_or("values.yaml");
        let body = cm["data"][key].as_str().expect("values in the ConfigMap");
        args.extend([
            "-f".to_string(),
            write(dir, &format!("{env}-from.yaml"), body),
        ]);
    }
    let own = write(
        dir,
        &format!("{env}-hr.json"),
        &hr["spec"]["values"].to_string(),
    );
    args.extend(["-f".to_string(), own]);
    args
}

#[tokio::test]
async fn environments_apply_to_a_real_apiserver() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("bpfleet CRDs install");
    let stand_ins = workspace_root()
        .join("e2e/tests/chart/stand-in-crds.yaml")
        .to_string_lossy()
        .into_owned();
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
    for ns in [NS, "flux-system"] {
        cp.kubectl_ok(&["create", "namespace", ns]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let dry_run = |label: &str, yaml: &str| {
        let n = docs(yaml).len();
        assert!(n > 0, "{label}: nothing to apply");
        let f = write(dir.path(), "apply.yaml", yaml);
        let out = cp
            .kubectl_ok(&["apply", "--server-side", "--dry-run=server", "-f", &f])
            .unwrap_or_else(|e| panic!("{label}: the apiserver refuses it: {e}"));
        let applied = out
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        assert_eq!(applied, n, "{label}: every object accepted:\n{out}");
    };
    for env in ENVS {
        // The chart with the environment's values file, as `helm install
        // -f values-<env>.yaml` renders it.
        dry_run(
            &format!("chart, values-{env}.yaml"),
            &render(&["-f", &env_values(env)]),
        );
        // As the Flux overlay merges it.
        let args = flux_values(env, dir.path());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        dry_run(&format!("chart, Flux {env} overlay"), &render(&args));
        // The overlay itself (HelmRelease, values ConfigMap) and the
        // environment's programs and TracerPolicy.
        dry_run(
            &format!("deploy/flux/environments/{env}"),
            &kustomize(&format!("deploy/flux/environments/{env}")),
        );
        let programs = kustomize(&format!("deploy/gitops/environments/{env}"));
        assert!(programs.contains("kind: TracerPolicy"), "{programs}");
        dry_run(&format!("deploy/gitops/environments/{env}"), &programs);
    }
}
