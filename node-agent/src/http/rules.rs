//! The tracer's redaction and route rules from a TracerPolicy: the file
//! given with `--http-rules` holds the policy's `spec.config` (or the
//! whole TracerPolicy manifest, as `kubectl get tracerpolicy NAME -o yaml`
//! prints it), YAML or JSON. Its `redaction` and `routes` map onto
//! [`Rules`] field for field; every other field (sampling, filters,
//! payload size) belongs to the kernel side and is ignored here.
//!
//! Command-line routes (`--http-route`) come first, then the policy's;
//! the policy's `unmatched` and `maxRoutes`, when set, win over
//! `--http-unmatched` and `--http-max-routes`.

use std::path::Path;

use bpfleet_httptrace::route::Unmatched;
use bpfleet_httptrace::rules::{RedactionRules, Rules};
use serde::Deserialize;

use crate::error::{Error, Result};

/// A TracerPolicy manifest, or only its `spec.config`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Document {
    Policy { spec: Spec },
    Config(PolicyConfig),
}

#[derive(Debug, Deserialize)]
struct Spec {
    #[serde(default)]
    config: PolicyConfig,
}

/// The parts of `spec.config` the tracer's userspace applies.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyConfig {
    #[serde(default)]
    redaction: Redaction,
    #[serde(default)]
    routes: Routes,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Redaction {
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    query_params: Vec<String>,
    #[serde(default)]
    command_line_patterns: Vec<String>,
    #[serde(default)]
    disable_defaults: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Routes {
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    unmatched: Option<String>,
    #[serde(default)]
    max_routes: Option<i64>,
}

/// Parses a policy document (YAML or JSON) and lays it over `base` (the
/// command line's rules); checks that the result compiles.
pub fn apply_policy(base: Rules, text: &str) -> Result<Rules> {
    let bad = |why: String| Error::Invalid(format!("--http-rules: {why}"));
    let doc: Document = serde_yaml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let cfg = match doc {
        Document::Policy { spec } => spec.config,
        Document::Config(c) => c,
    };
    let mut rules = base;
    rules.redaction = RedactionRules {
        headers: cfg.redaction.headers,
        query_params: cfg.redaction.query_params,
        command_line_patterns: cfg.redaction.command_line_patterns,
        disable_defaults: cfg.redaction.disable_defaults,
    };
    // Command-line patterns keep their place in front; the error index of
    // a bad policy pattern is its index in the policy.
    let first_policy = rules.routes.patterns.len();
    rules.routes.patterns.extend(cfg.routes.patterns);
    if let Some(u) = cfg.routes.unmatched {
        rules.routes.unmatched = match u.to_ascii_lowercase().as_str() {
            "heuristic" => Unmatched::Heuristic,
            "wildcard" => Unmatched::Wildcard,
            _ => {
                return Err(bad(format!(
                    "routes.unmatched is Heuristic or Wildcard, not {u:?}"
                )));
            }
        };
    }
    if let Some(m) = cfg.routes.max_routes {
        rules.routes.max_routes = usize::try_from(m)
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| bad(format!("routes.maxRoutes is a positive count, not {m}")))?;
    }
    match rules.check() {
        Ok(()) => Ok(rules),
        Err(bpfleet_httptrace::rules::BadRule::Route(e)) if e.index >= first_policy => Err(bad(
            format!("routes.patterns[{}]: {}", e.index - first_policy, e.reason),
        )),
        Err(bpfleet_httptrace::rules::BadRule::Route(e)) => Err(Error::Invalid(format!(
            "--http-route {:?}: {}",
            rules.routes.patterns[e.index], e.reason
        ))),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Reads `path` and lays the policy over `base`.
pub fn load_policy(base: Rules, path: &Path) -> Result<Rules> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("--http-rules {}: {e}", path.display())))?;
    apply_policy(base, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfleet_api::TracerPolicySpec;
    use bpfleet_httptrace::rules::RouteRules;

    fn cli_rules() -> Rules {
        Rules {
            routes: RouteRules {
                patterns: vec!["/cli/{id}".into()],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// A TracerPolicy built with the API crate's own types, serialized the
    /// way the apiserver would hand it out.
    fn policy_spec() -> TracerPolicySpec {
        serde_json::from_value(serde_json::json!({
            "targets": { "programNames": ["http-tracer"] },
            "config": {
                "samplingRate": 0.5,
                "redaction": {
                    "headers": ["X-Session"],
                    "queryParams": ["sid"],
                    "commandLinePatterns": ["--pin=\\S+"],
                    "disableDefaults": false
                },
                "routes": {
                    "patterns": ["/carts/{id}", "/assets/*"],
                    "unmatched": "Wildcard",
                    "maxRoutes": 50
                }
            }
        }))
        .unwrap()
    }

    fn expected() -> Rules {
        Rules {
            redaction: RedactionRules {
                headers: vec!["X-Session".into()],
                query_params: vec!["sid".into()],
                command_line_patterns: vec!["--pin=\\S+".into()],
                disable_defaults: false,
            },
            routes: RouteRules {
                patterns: vec!["/cli/{id}".into(), "/carts/{id}".into(), "/assets/*".into()],
                unmatched: Unmatched::Wildcard,
                max_routes: 50,
            },
        }
    }

    #[test]
    fn a_policy_config_maps_onto_the_rules() {
        let spec = policy_spec();
        let yaml = serde_yaml::to_string(&spec.config).unwrap();
        assert_eq!(apply_policy(cli_rules(), &yaml).unwrap(), expected());
        let json = serde_json::to_string(&spec.config).unwrap();
        assert_eq!(apply_policy(cli_rules(), &json).unwrap(), expected());
    }

    #[test]
    fn a_whole_manifest_works_too() {
        let policy = bpfleet_api::TracerPolicy::new("p", policy_spec());
        let yaml = serde_yaml::to_string(&policy).unwrap();
        assert_eq!(apply_policy(cli_rules(), &yaml).unwrap(), expected());
    }

    #[test]
    fn an_empty_config_keeps_the_command_line_and_the_defaults() {
        let rules = apply_policy(cli_rules(), "{}").unwrap();
        assert_eq!(rules, cli_rules());
        let text = rules.redactor().unwrap().target("/p?token=x");
        assert_eq!(text, "/p?token=[REDACTED]");
    }

    #[test]
    fn bad_rules_name_their_field() {
        let e = apply_policy(cli_rules(), "routes: {patterns: [\"/ok\", \"nope\"]}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes.patterns[1]"), "{e}");
        let e = apply_policy(cli_rules(), "redaction: {commandLinePatterns: [\"(\"]}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("redaction.commandLinePatterns[0]"), "{e}");
        let e = apply_policy(cli_rules(), "routes: {unmatched: Sometimes}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes.unmatched"), "{e}");
        let e = apply_policy(cli_rules(), "routes: {maxRoutes: 0}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes.maxRoutes"), "{e}");
        assert!(apply_policy(cli_rules(), "routes: [1, 2]").is_err());
    }
}
