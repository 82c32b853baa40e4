//! The shipped TracerProgram for the tracer (examples/http-tracer-canary.yaml)
//! names exactly the programs and shared maps the object has, so applying it
//! loads a working tracer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bpfleet_api::TracerProgram;
use bpfleet_api::program::HookType;
use bpfleet_tracer::{PERSISTENT_MAPS, PROGRAMS};

#[test]
fn example_manifest_matches_the_object() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/http-tracer-canary.yaml"
    );
    let tp: TracerProgram = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let listed: Vec<(String, String)> = tp
        .spec
        .programs
        .iter()
        .map(|p| {
            assert_eq!(p.hook, HookType::Tracepoint, "{}", p.name);
            let t = p.tracepoint.as_ref().expect("tracepoint settings");
            (p.name.clone(), format!("{}/{}", t.category, t.name))
        })
        .collect();
    let want: Vec<(String, String)> = PROGRAMS
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(listed, want);
    assert_eq!(tp.spec.persistent_maps, PERSISTENT_MAPS);
}
