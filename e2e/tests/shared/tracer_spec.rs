//! The HTTP tracer as a TracerProgram, for the test binaries that roll the
//! real object out (`#[path]`-included by each: the chart suite's scrape
//! test and the cluster test).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A TracerProgram `http-tracer` (version 1.0.0, immediate) whose object is
/// the file `object` on the nodes: every program of the tracer with its
/// tracepoint, and the maps that persist across revisions.
pub fn http_tracer(object: &str) -> Value {
    let programs: Vec<Value> = bpfleet_tracer::PROGRAMS
        .iter()
        .map(|(prog, tp)| {
            let (category, name) = tp.split_once('/').unwrap_or(("syscalls", tp));
            json!({"name": prog, "type": "Tracepoint",
                   "tracepoint": {"category": category, "name": name}})
        })
        .collect();
    json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "TracerProgram",
        "metadata": {"name": "http-tracer"},
        "spec": {
            "version": "1.0.0",
            "bytecode": {"file": {"path": object}},
            "sha256": hex::encode(Sha256::digest(bpfleet_bpf::HTTP_TRACER)),
            "programs": programs,
            "persistentMaps": bpfleet_tracer::PERSISTENT_MAPS,
            "strategy": {"immediate": {}},
        },
    })
}
