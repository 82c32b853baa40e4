//! What the apiserver's schema cannot say about a TracerPolicy, checked
//! before any agent sees it: patterns that do not compile, route patterns
//! that can never match, sizes that are not quantities. Each problem names
//! the field. A policy with problems is not written to any node (the
//! nodes keep what they hold) and its status says why.

use bpfleet_api::TracerPolicySpec;
use bpfleet_httptrace::route::Unmatched;
use bpfleet_httptrace::rules::{BadRule, RedactionRules, RouteRules, Rules};

use crate::gates::parse_quantity;

/// Every problem of `spec`, each naming its field; empty when it can work.
pub fn problems(spec: &TracerPolicySpec) -> Vec<String> {
    let mut out = Vec::new();
    let cfg = &spec.config;
    let rules = Rules {
        redaction: RedactionRules {
            headers: cfg.redaction.headers.clone(),
            query_params: cfg.redaction.query_params.clone(),
            command_line_patterns: cfg.redaction.command_line_patterns.clone(),
            disable_defaults: cfg.redaction.disable_defaults,
        },
        routes: RouteRules {
            patterns: cfg.routes.patterns.clone(),
            unmatched: Unmatched::Heuristic,
            max_routes: 1,
        },
    };
    // Both halves, so that one bad field does not hide the other.
    if let Err(e) = rules.redactor() {
        // The regex crate's message spans lines; a condition is one.
        let one_line = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        out.push(format!("spec.config.{one_line}"));
    }
    match rules.routes() {
        Err(BadRule::Route(e)) => out.push(format!(
            "spec.config.routes.patterns[{}]: {:?}: {}",
            e.index, cfg.routes.patterns[e.index], e.reason
        )),
        Err(e) => out.push(format!("spec.config.{e}")),
        Ok(routes) => {
            if let Some((j, i)) = routes.first_unreachable() {
                out.push(format!(
                    "spec.config.routes.patterns[{j}]: {:?} never names a route: patterns[{i}] ({:?}) comes first and matches every path it matches",
                    cfg.routes.patterns[j], cfg.routes.patterns[i]
                ));
            }
        }
    }
    let quantities = [
        (
            "spec.budgets.maxMapMemory",
            spec.budgets
                .as_ref()
                .and_then(|b| b.max_map_memory.as_ref()),
        ),
        (
            "spec.health.maxMapMemory",
            spec.health.max_map_memory.as_ref(),
        ),
    ];
    for (field, q) in quantities {
        if let Some(q) = q
            && let Err(e) = parse_quantity(&q.0)
        {
            out.push(format!("{field}: {e}"));
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, a) in spec.alerts.iter().enumerate() {
        if !names.insert(a.name.as_str()) {
            out.push(format!(
                "spec.alerts[{i}].name: {:?} is used by an earlier alert",
                a.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> TracerPolicySpec {
        let mut base = serde_json::json!({"targets": {"programNames": ["p"]}});
        if let (Some(b), Some(v)) = (base.as_object_mut(), v.as_object()) {
            b.extend(v.clone());
        }
        serde_json::from_value(base).expect("spec")
    }

    #[test]
    fn a_policy_that_can_work_has_no_problems() {
        let s = spec(serde_json::json!({
            "config": {
                "redaction": {"headers": ["X-Session"], "commandLinePatterns": ["(--token )\\S+"]},
                "routes": {"patterns": ["/api/users/{id}", "/api/*"]}
            },
            "budgets": {"maxMapMemory": "64Mi"},
            "health": {"maxMapMemory": "1Gi"},
            "alerts": [{"name": "A", "signal": "ErrorRate", "threshold": 0.1},
                       {"name": "B", "signal": "P99Latency", "threshold": 1}]
        }));
        assert_eq!(problems(&s), Vec::<String>::new());
    }

    #[test]
    fn each_problem_names_its_field() {
        let s = spec(serde_json::json!({
            "config": {
                "redaction": {"commandLinePatterns": ["ok", "(unclosed"]},
                "routes": {"patterns": ["/api/*", "/api/users/{id}"]}
            },
            "budgets": {"maxMapMemory": "lots"},
            "health": {"maxMapMemory": "12Qi"},
            "alerts": [{"name": "A", "signal": "ErrorRate", "threshold": 0.1},
                       {"name": "A", "signal": "P99Latency", "threshold": 1}]
        }));
        let p = problems(&s);
        let has = |field: &str| p.iter().any(|m| m.starts_with(field));
        assert!(has("spec.config.redaction.commandLinePatterns[1]"), "{p:?}");
        assert!(p.iter().all(|m| !m.contains('\n')), "one line each: {p:?}");
        assert!(has("spec.config.routes.patterns[1]"), "{p:?}");
        assert!(
            p.iter().any(|m| m.contains("patterns[0] (\"/api/*\")")),
            "{p:?}"
        );
        assert!(has("spec.budgets.maxMapMemory"), "{p:?}");
        assert!(has("spec.health.maxMapMemory"), "{p:?}");
        assert!(has("spec.alerts[1].name"), "{p:?}");
        assert_eq!(p.len(), 5, "{p:?}");
        let s = spec(serde_json::json!({"config": {"routes": {"patterns": ["/a/*/b"]}}}));
        let p = problems(&s);
        assert!(
            p[0].starts_with("spec.config.routes.patterns[0]: \"/a/*/b\""),
            "{p:?}"
        );
    }
}
