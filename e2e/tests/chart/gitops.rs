//! The GitOps examples (Argo CD Applications, Flux GitRepository,
//! Kustomizations and HelmRelease) point at paths the repository holds,
//! and their chart values render; Argo CD renders without Helm lookups.

use serde_json::Value;

use bpfleet_e2e::workspace_root;

use crate::support::{docs, kind, read, render, strs};

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

/// A cluster registered in Argo CD, as its cluster generator sees it.
struct Cluster {
    name: &'static str,
    server: &'static str,
    labels: &'static [(&'static str, &'static str)],
}

const CLUSTERS: &[Cluster] = &[
    Cluster {
        name: "dev-1",
        server: "https://dev-1.clusters.example:6443",
        labels: &[("env", "dev")],
    },
    Cluster {
        name: "staging-1",
        server: "https://staging-1.clusters.example:6443",
        labels: &[("env", "staging"), ("region", "eu")],
    },
    Cluster {
        name: "prod-eu",
        server: "https://prod-eu.clusters.example:6443",
        labels: &[("env", "production"), ("region", "eu")],
    },
    Cluster {
        name: "prod-us",
        server: "https://prod-us.clusters.example:6443",
        labels: &[("env", "production"), ("region", "us")],
    },
    // Not bpfleet's: another env value, no env label.
    Cluster {
        name: "sandbox",
        server: "https://sandbox.clusters.example:6443",
        labels: &[("env", "sandbox")],
    },
    Cluster {
        name: "tools",
        server: "https://tools.clusters.example:6443",
        labels: &[],
    },
];

impl Cluster {
    fn label(&self, k: &str) -> Option<&'static str> {
        self.labels.iter().find(|(l, _)| *l == k).map(|(_, v)| *v)
    }

    /// The parameters the cluster generator offers for this cluster (the
    /// ones of its default, non-Go template syntax).
    fn param(&self, key: &str) -> String {
        match key {
            "name" => self.name.to_string(),
            "nameNormalized" => self.name.replace('_', "-").to_lowercase(),
            "server" => self.server.to_string(),
            k => match k.strip_prefix("metadata.labels.") {
                Some(l) => self
                    .label(l)
                    .unwrap_or_else(|| panic!("{}: no label {l}", self.name))
                    .to_string(),
                None => panic!("the cluster generator has no parameter {k}"),
            },
        }
    }

    /// Whether a generator's label selector selects this cluster.
    fn selected_by(&self, selector: &Value) -> bool {
        let labels_ok = selector["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .all(|(k, v)| self.label(k) == v.as_str());
        let exprs_ok = selector["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|e| {
                let have = self.label(e["key"].as_str().unwrap());
                let values = strs(&e["values"]);
                match e["operator"].as_str().unwrap() {
                    "In" => have.is_some_and(|h| values.iter().any(|v| v == h)),
                    "NotIn" => !have.is_some_and(|h| values.iter().any(|v| v == h)),
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    op => panic!("selector operator {op}"),
                }
            });
        labels_ok && exprs_ok
    }
}

/// `{{param}}` replaced in every string of `v`, as the generator does; an
/// unknown parameter panics (Argo CD would leave it unrendered).
fn substitute(v: &Value, c: &Cluster) -> Value {
    match v {
        Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("{{") {
                out.push_str(&rest[..i]);
                let end = rest[i..].find("}}").expect("unclosed {{") + i;
                out.push_str(&c.param(rest[i + 2..end].trim()));
                rest = &rest[end + 2..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, c)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), substitute(x, c)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[test]
fn applicationsets_give_each_environment_its_values_and_programs() {
    let root = workspace_root();
    let sets = yaml_docs("deploy/argocd/applicationset-environments.yaml");
    assert_eq!(sets.len(), 2, "the chart and the programs");
    let mut paths = Vec::new();
    for set in &sets {
        assert_eq!(set["apiVersion"], "argoproj.io/v1alpha1");
        assert_eq!(set["kind"], "ApplicationSet");
        let generators = set["spec"]["generators"].as_array().unwrap();
        assert_eq!(generators.len(), 1);
        let selector = &generators[0]["clusters"]["selector"];
        assert!(selector.is_object(), "a cluster generator with a selector");
        let selected: Vec<&Cluster> = CLUSTERS
            .iter()
            .filter(|c| c.selected_by(selector))
            .collect();
        assert_eq!(
            selected.iter().map(|c| c.name).collect::<Vec<_>>(),
            ["dev-1", "staging-1", "prod-eu", "prod-us"],
            "{}: clusters selected",
            set["metadata"]["name"]
        );
        for c in selected {
            let env = c.label("env").unwrap();
            let app = substitute(&set["spec"]["template"], c);
            assert!(!app.to_string().contains("{{"), "unrendered: {app}");
            let name = app["metadata"]["name"].as_str().unwrap();
            assert!(
                name.len() <= 253
                    && name
                        .chars()
                        .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'),
                "Application name {name}"
            );
            assert!(name.ends_with(c.name), "{name}");
            assert_eq!(app["metadata"]["labels"]["bpfleet.dev/environment"], env);
            assert_eq!(app["spec"]["destination"]["server"], c.server);
            let source = &app["spec"]["source"];
            let path = source["path"].as_str().unwrap();
            assert!(root.join(path).is_dir(), "{name}: {path}");
            paths.push(path.to_string());
            if path == "charts/bpfleet" {
                // valueFiles are relative to the chart; the environment's
                // file exists and renders, without lookups.
                let files = strs(&source["helm"]["valueFiles"]);
                assert_eq!(files, [format!("values-{env}.yaml")], "{name}");
                let mut args = Vec::new();
                for f in &files {
                    let p = root.join(path).join(f);
                    assert!(p.is_file(), "{name}: {}", p.display());
                    args.push("-f".to_string());
                    args.push(p.to_string_lossy().into_owned());
                }
                let dir = tempfile::tempdir().unwrap();
                let obj = dir.path().join("object.json");
                std::fs::write(&obj, source["helm"]["valuesObject"].to_string()).unwrap();
                args.push("-f".to_string());
                args.push(obj.to_string_lossy().into_owned());
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let d = docs(&render(&args));
                assert!(
                    kind(&d, "Secret").is_empty(),
                    "{name}: renders without lookups"
                );
                // The environment's values are in force: its operator
                // replica count is the one its file sets (or the default).
                let env_values: Value =
                    serde_yaml::from_str(&read(&format!("charts/bpfleet/values-{env}.yaml")))
                        .unwrap();
                let want = env_values["operator"]["replicas"].as_u64().unwrap_or(2);
                let op = kind(&d, "Deployment")[0];
                assert_eq!(op["spec"]["replicas"], want, "{name}");
            } else {
                assert_eq!(path, format!("deploy/gitops/environments/{env}"), "{name}");
                assert!(root.join(path).join("kustomization.yaml").is_file());
                assert_eq!(
                    source["kustomize"]["commonAnnotations"]["bpfleet.dev/source-commit"],
                    "${ARGOCD_APP_REVISION}"
                );
            }
        }
    }
    assert_eq!(paths.len(), 8, "two Applications for each of four clusters");
}

#[test]
fn flux_clusters_pick_their_environments_overlays() {
    use crate::environments::{ENVS, flux_values, kustomize};
    let root = workspace_root();
    let source = &yaml_docs("deploy/flux/gitrepository.yaml")[0];
    // The single-cluster release path still builds, as the base.
    let base = docs(&kustomize("deploy/flux/release"));
    assert_eq!(base.len(), 1);
    assert_eq!(base[0]["kind"], "HelmRelease");
    for env in ENVS {
        let ks = yaml_docs(&format!("deploy/flux/clusters/{env}/bpfleet.yaml"));
        assert_eq!(ks.len(), 2, "{env}: release and programs");
        let by_name = |n: &str| {
            ks.iter()
                .find(|k| k["metadata"]["name"] == n)
                .unwrap_or_else(|| panic!("{env}: no Kustomization {n}"))
        };
        let release = by_name("bpfleet-release");
        let programs = by_name("bpfleet-programs");
        for k in [release, programs] {
            assert_eq!(k["apiVersion"], "kustomize.toolkit.fluxcd.io/v1");
            assert_eq!(k["spec"]["sourceRef"]["name"], source["metadata"]["name"]);
            assert_eq!(k["spec"]["wait"], true);
        }
        assert_eq!(
            release["spec"]["path"],
            format!("./deploy/flux/environments/{env}")
        );
        assert_eq!(
            programs["spec"]["path"],
            format!("./deploy/gitops/environments/{env}")
        );
        assert_eq!(programs["spec"]["dependsOn"][0]["name"], "bpfleet-release");

        // The overlay's HelmRelease takes the environment's values file
        // and the overlay's ConfigMap, and the chart renders with them as
        // Flux merges them: the overlay's labels reach every object.
        let built = docs(&kustomize(&format!("deploy/flux/environments/{env}")));
        let hr = kind(&built, "HelmRelease")[0];
        assert_eq!(
            strs(&hr["spec"]["chart"]["spec"]["valuesFiles"]),
            [
                "./charts/bpfleet/values.yaml".to_string(),
                format!("./charts/bpfleet/values-{env}.yaml")
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let args = flux_values(env, dir.path());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let d = docs(&render(&args));
        for o in d.iter().filter(|o| o["kind"] != "CustomResourceDefinition") {
            assert_eq!(
                o["metadata"]["labels"]["bpfleet.dev/environment"], env,
                "{env}: {} {} lacks the overlay's label",
                o["kind"], o["metadata"]["name"]
            );
        }
        assert!(
            root.join(format!(
                "deploy/gitops/environments/{env}/tracer-policy.yaml"
            ))
            .is_file()
        );
    }
}
