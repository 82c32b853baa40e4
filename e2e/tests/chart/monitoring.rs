//! Alerts and dashboards use metrics that exist: every metric name in the
//! PrometheusRule's expressions and the Grafana dashboards' targets is one
//! the agent's or operator's real registries export, the alerts bpfleet
//! documents are all there, and every metric of the agent core and the
//! tracer's health is shown or alerted on somewhere. The agent's names come
//! from its registry built in-process: needs root and bpffs.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::code::{agent_core_metrics, agent_metrics, operator_metrics};
use crate::support::{all_on, docs, kind, named, read, render};

/// Metric names in a PromQL expression: every `bpfleet_*` identifier, and
/// `http_*` identifiers used as a selector (followed by `{` or `[`; the
/// tracer's label names start with `http_` too).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < bytes.len()
                && ((bytes[i] as char).is_ascii_alphanumeric() || bytes[i] == b'_')
            {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start().chars().next();
            if word.starts_with("bpfleet_")
                || (word.starts_with("http_") && matches!(next, Some('{' | '[')))
            {
                out.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn alerts_and_dashboards_use_metrics_that_exist() {
    let values: Value = serde_yaml::from_str(&read("charts/bpfleet/values.yaml")).unwrap();
    let pr = &values["monitoring"]["prometheusRule"];
    let mut known = agent_metrics();
    known.extend(operator_metrics());
    // The tracer metric names in values are ones the agent exports.
    for m in [
        pr["eventsLostMetric"].as_str().unwrap().to_string(),
        format!("{}_count", pr["httpDurationMetric"].as_str().unwrap()),
    ] {
        assert!(
            known.contains(&m),
            "values name {m}, which the agent does not export"
        );
    }

    let d = docs(&render(&["-f", &all_on()]));
    let rule = &kind(&d, "PrometheusRule")[0];
    let mut alerts = BTreeSet::new();
    let mut exprs = Vec::new();
    for g in rule["spec"]["groups"].as_array().unwrap() {
        for r in g["rules"].as_array().unwrap() {
            alerts.insert(r["alert"].as_str().unwrap().to_string());
            let e = r["expr"].as_str().unwrap();
            assert_eq!(
                e.matches('(').count(),
                e.matches(')').count(),
                "unbalanced: {e}"
            );
            assert_eq!(e.matches('{').count(), e.matches('}').count(), "{e}");
            exprs.push(e.to_string());
        }
    }
    for a in [
        "BpfleetAgentDown",
        "BpfleetTracerDown",
        "BpfleetHttpErrorRateHigh",
        "BpfleetRolloutAborted",
        "BpfleetProgramErrors",
        "BpfleetBpfCpuOverBudget",
        "BpfleetTracerEventsLost",
    ] {
        assert!(alerts.contains(a), "alert {a} missing: {alerts:?}");
    }
    let http = pr["httpDurationMetric"].as_str().unwrap();
    assert!(exprs.iter().any(|e| e.contains(&format!("{http}_count"))));
    // Agent alerts select the job the agent ServiceMonitor produces.
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("job=\"bpfleet-agent-metrics\""))
    );
    named(&d, "Service", "bpfleet-agent-metrics");
    named(&d, "Service", "bpfleet-operator-metrics");

    for cm in kind(&d, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
    {
        for (file, body) in cm["data"].as_object().unwrap() {
            let dash: Value = serde_json::from_str(body.as_str().unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(dash["uid"].is_string() && dash["title"].is_string());
            for p in dash["panels"].as_array().unwrap() {
                for t in p["targets"].as_array().unwrap() {
                    exprs.push(t["expr"].as_str().unwrap().to_string());
                }
            }
        }
    }
    let mut used = BTreeSet::new();
    for e in &exprs {
        for m in metrics_in(e) {
            assert!(
                known.contains(&m),
                "{m} is exported by nobody (in `{e}`); known: {known:?}"
            );
            used.insert(m);
        }
    }
    // Every metric of the agent core, and the tracer's health, is shown or
    // alerted on somewhere.
    let mut core = agent_core_metrics();
    core.extend([
        "bpfleet_tracer_events_lost_total".to_string(),
        "bpfleet_tracer_reader_up".to_string(),
    ]);
    for m in core {
        assert!(used.contains(&m), "{m} appears in no dashboard or alert");
    }
}
