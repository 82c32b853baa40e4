//! `helm lint --strict` passes with the default values and with every
//! optional part on, and each of those renders the kinds it should (and
//! only those): monitoring and cert-manager objects only when asked, TLS
//! Secrets only in helm TLS mode, three dashboards, two CRDs.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{NS, all_on, chart, docs, helm, kind, render, text};

#[test]
fn chart_lints_with_defaults_and_everything_on() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let all_on = all_on();
    for extra in [vec![], vec!["-f", all_on.as_str()]] {
        let mut args = vec!["lint", "--strict", chart, "--namespace", NS];
        args.extend(extra.iter().copied());
        let out = helm(&args);
        assert!(out.status.success(), "helm lint {extra:?}: {}", text(&out));
        assert!(text(&out).contains("0 chart(s) failed"), "{}", text(&out));
    }
    // Defaults and everything-on render what they should.
    let defaults = docs(&render(&[]));
    let full = docs(&render(&["-f", &all_on]));
    let kinds = |d: &[Value]| -> BTreeSet<String> {
        d.iter()
            .map(|v| v["kind"].as_str().unwrap().to_string())
            .collect()
    };
    for k in ["ServiceMonitor", "PrometheusRule", "Certificate", "Issuer"] {
        assert!(!kinds(&defaults).contains(k), "{k} rendered by default");
        assert!(kinds(&full).contains(k), "{k} missing with everything on");
    }
    assert_eq!(kind(&defaults, "Secret").len(), 2, "helm-mode TLS secrets");
    assert_eq!(kind(&full, "Secret").len(), 0, "cert-manager writes them");
    assert_eq!(kind(&full, "ServiceMonitor").len(), 2);
    let dashboards: Vec<_> = kind(&full, "ConfigMap")
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(dashboards.len(), 3, "three dashboards");
    assert_eq!(kind(&defaults, "CustomResourceDefinition").len(), 2);
}
