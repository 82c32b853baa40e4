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
