//! Every manifest in `examples/` parses into the Rust types without losing a
//! field, so the examples and the API cannot drift apart silently. (That the
//! apiserver accepts them is checked in e2e/tests/apiserver.rs.)

// Test helpers panic on purpose: the panic message is the test report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use bpfleet_api::{TracerPolicy, TracerProgram};
use serde_json::Value;

fn examples() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("examples/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable example");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).expect("valid YAML");
            out.push((path.display().to_string(), value));
        }
    }
    assert!(
        out.len() >= 4,
        "expected the shipped examples, found {}",
        out.len()
    );
    out
}

/// Every leaf of `original` must be present, equal, in `reparsed`.
fn assert_preserved(original: &Value, reparsed: &Value, at: &str) {
    match (original, reparsed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let child = format!("{at}.{k}");
                let other = b
                    .get(k)
                    .unwrap_or_else(|| panic!("{child} dropped by the Rust types"));
                assert_preserved(v, other, &child);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{at}: list length changed");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_preserved(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            assert_eq!(a.as_f64(), b.as_f64(), "{at}: number changed");
        }
        (a, b) => assert_eq!(a, b, "{at}: value changed"),
    }
}

#[test]
fn examples_round_trip_through_the_types() {
    for (file, value) in examples() {
        let reparsed = match value["kind"].as_str() {
            Some("TracerProgram") => {
                let tp: TracerProgram =
                    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
                serde_json::to_value(tp).expect("serializes")
            }
            Some("TracerPolicy") => {
                let tp: TracerPolicy =
                    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
                serde_json::to_value(tp).expect("serializes")
            }
            other => panic!("{file}: unexpected kind {other:?}"),
        };
        assert_preserved(&value, &reparsed, &file);
    }
}
