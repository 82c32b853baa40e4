//! The committed `crds/` must be exactly what the Rust types generate.

// Test helpers panic on purpose: the panic message is the test report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn committed_crds_match_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let mut stale = Vec::new();
    for (file, crd) in bpfleet_api::crdgen::all() {
        let want = bpfleet_api::crdgen::render(&crd).expect("CRD renders as YAML");
        let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if have != want {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRDs {stale:?}: run `cargo run -p bpfleet-api --bin crdgen` and commit crds/"
    );
    // Nothing else lives in crds/: a CRD removed from the types must go too.
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .expect("crds/ exists")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    on_disk.sort();
    let mut generated: Vec<String> = bpfleet_api::crdgen::all()
        .into_iter()
        .map(|(f, _)| f.to_string())
        .collect();
    generated.sort();
    assert_eq!(on_disk, generated);
}
