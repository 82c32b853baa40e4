//! The chart ships exactly the CRDs generated from the API types: every
//! file of `crds/` copied unchanged into `charts/bpfleet/crds/`, and
//! nothing else. Reads files only; no helm.

use std::collections::BTreeMap;
use std::path::Path;

use bpfleet_e2e::workspace_root;

use crate::support::chart;

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
