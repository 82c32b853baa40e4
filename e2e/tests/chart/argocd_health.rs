//! The Argo CD health check for TracerPrograms
//! (`deploy/argocd/tracerprogram-health.lua`, carried verbatim by the
//! argocd-cm patch) maps status conditions to Argo CD health, run for
//! real in a Lua 5.4 interpreter case by case.

use std::process::Command;

use serde_json::{Value, json};

use crate::support::{read, text};

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
