//! The tracer's redaction and route rules from a TracerPolicy, reaching
//! the agent two ways:
//!
//! - from the operator, per program: UpdateConfig's `tracer_rules`, the
//!   policy's `spec.config.redaction` and `spec.config.routes` (kept as
//!   [`PolicyRules`] in the state file);
//! - from the file given with `--http-rules`, node-wide: the policy's
//!   `spec.config` (or the whole TracerPolicy manifest, as `kubectl get
//!   tracerpolicy NAME -o yaml` prints it), YAML or JSON. Every other field
//!   (sampling, filters, payload size) belongs to the kernel side and is
//!   ignored here.
//!
//! The file is the node-local override: where it is given, it is in force
//! for every program and the operator's rules are kept but not applied
//! (List reports them as overridden). Either way the rules are laid over
//! the command line's ([`lay_over`]): command-line routes (`--http-route`)
//! come first, then the policy's; the policy's `unmatched` and
//! `maxRoutes`, when set, win over `--http-unmatched` and
//! `--http-max-routes`; its redaction lists add to the built-in defaults
//! (unless `disableDefaults`).

use std::path::Path;

use bpfleet_httptrace::route::Unmatched;
use bpfleet_httptrace::rules::{RedactionRules, Rules};
use bpfleet_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A TracerPolicy manifest, or only its `spec.config`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Document {
    Policy { spec: Spec },
    Config(PolicyRules),
}

#[derive(Debug, Deserialize)]
struct Spec {
    #[serde(default)]
    config: PolicyRules,
}

/// Most header or query parameter names in one policy's redaction.
pub const MAX_REDACTED_NAMES: usize = 64;
/// Most command-line patterns in one policy's redaction.
pub const MAX_COMMAND_LINE_PATTERNS: usize = 32;
/// Most route patterns in one policy.
pub const MAX_ROUTE_PATTERNS: usize = 128;
/// Longest single name or pattern.
pub const MAX_RULE_LEN: usize = 512;

/// The parts of a TracerPolicy's `spec.config` the tracer's userspace
/// applies, with the policy's field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRules {
    #[serde(default)]
    pub redaction: Redaction,
    #[serde(default)]
    pub routes: Routes,
}

/// `spec.config.redaction`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redaction {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_line_patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_defaults: bool,
}

/// `spec.config.routes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Routes {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_routes: Option<i64>,
}

impl PolicyRules {
    /// UpdateConfig's `tracer_rules`, checked for size (the patterns are
    /// compiled by [`lay_over`]); errors name the request's field.
    pub fn from_pb(r: &pb::TracerRules) -> Result<Self> {
        let bad = |why: String| Error::Invalid(format!("tracer_rules.{why}"));
        let lists = [
            ("redact_headers", &r.redact_headers, MAX_REDACTED_NAMES),
            (
                "redact_query_params",
                &r.redact_query_params,
                MAX_REDACTED_NAMES,
            ),
            (
                "redact_command_line_patterns",
                &r.redact_command_line_patterns,
                MAX_COMMAND_LINE_PATTERNS,
            ),
            ("route_patterns", &r.route_patterns, MAX_ROUTE_PATTERNS),
        ];
        for (field, list, max) in lists {
            if list.len() > max {
                return Err(bad(format!("{field}: at most {max}, got {}", list.len())));
            }
            for (i, v) in list.iter().enumerate() {
                if v.is_empty() || v.len() > MAX_RULE_LEN {
                    return Err(bad(format!(
                        "{field}[{i}]: 1 to {MAX_RULE_LEN} bytes, got {}",
                        v.len()
                    )));
                }
            }
        }
        let unmatched = match r.unmatched_routes.as_str() {
            "" => None,
            u if parse_unmatched(u).is_some() => Some(u.to_string()),
            u => {
                return Err(bad(format!(
                    "unmatched_routes: Heuristic, Wildcard or empty, not {u:?}"
                )));
            }
        };
        Ok(Self {
            redaction: Redaction {
                headers: r.redact_headers.clone(),
                query_params: r.redact_query_params.clone(),
                command_line_patterns: r.redact_command_line_patterns.clone(),
                disable_defaults: r.disable_default_redaction,
            },
            routes: Routes {
                patterns: r.route_patterns.clone(),
                unmatched,
                max_routes: (r.max_routes > 0).then_some(i64::from(r.max_routes)),
            },
        })
    }

    /// As List reports them.
    pub fn to_pb(&self) -> pb::TracerRules {
        pb::TracerRules {
            redact_headers: self.redaction.headers.clone(),
            redact_query_params: self.redaction.query_params.clone(),
            redact_command_line_patterns: self.redaction.command_line_patterns.clone(),
            disable_default_redaction: self.redaction.disable_defaults,
            route_patterns: self.routes.patterns.clone(),
            unmatched_routes: self.routes.unmatched.clone().unwrap_or_default(),
            max_routes: self
                .routes
                .max_routes
                .and_then(|m| u32::try_from(m).ok())
                .unwrap_or(0),
        }
    }
}

fn parse_unmatched(u: &str) -> Option<Unmatched> {
    match u.to_ascii_lowercase().as_str() {
        "heuristic" => Some(Unmatched::Heuristic),
        "wildcard" => Some(Unmatched::Wildcard),
        _ => None,
    }
}

/// Lays a policy's rules over `base` (the command line's) and checks that
/// the result compiles. Errors name the policy's field
/// (`routes.patterns[1]`); a bad command-line route is named as such.
pub fn lay_over(base: Rules, cfg: &PolicyRules) -> Result<Rules> {
    let bad = |why: String| Error::Invalid(why);
    let mut rules = base;
    rules.redaction = RedactionRules {
        headers: cfg.redaction.headers.clone(),
        query_params: cfg.redaction.query_params.clone(),
        command_line_patterns: cfg.redaction.command_line_patterns.clone(),
        disable_defaults: cfg.redaction.disable_defaults,
    };
    // Command-line patterns keep their place in front; the error index of
    // a bad policy pattern is its index in the policy.
    let first_policy = rules.routes.patterns.len();
    rules
        .routes
        .patterns
        .extend(cfg.routes.patterns.iter().cloned());
    if let Some(u) = &cfg.routes.unmatched {
        rules.routes.unmatched = parse_unmatched(u).ok_or_else(|| {
            bad(format!(
                "routes.unmatched is Heuristic or Wildcard, not {u:?}"
            ))
        })?;
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

/// Parses a policy document (YAML or JSON) and lays it over `base` (the
/// command line's rules); checks that the result compiles.
pub fn apply_policy(base: Rules, text: &str) -> Result<Rules> {
    let doc: Document =
        serde_yaml::from_str(text).map_err(|e| Error::Invalid(format!("--http-rules: {e}")))?;
    let cfg = match doc {
        Document::Policy { spec } => spec.config,
        Document::Config(c) => c,
    };
    lay_over(base, &cfg).map_err(|e| match e {
        Error::Invalid(m) if !m.starts_with("--http-route ") => {
            Error::Invalid(format!("--http-rules: {m}"))
        }
        e => e,
    })
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

    /// The operator's form (UpdateConfig) and the file's are the same
    /// rules: a policy's config sent both ways gives the same result.
    #[test]
    fn the_operators_rules_and_the_files_agree() {
        let spec = policy_spec();
        let r = &spec.config;
        let sent = pb::TracerRules {
            redact_headers: r.redaction.headers.clone(),
            redact_query_params: r.redaction.query_params.clone(),
            redact_command_line_patterns: r.redaction.command_line_patterns.clone(),
            disable_default_redaction: r.redaction.disable_defaults,
            route_patterns: r.routes.patterns.clone(),
            unmatched_routes: "Wildcard".into(),
            max_routes: 50,
        };
        let rules = PolicyRules::from_pb(&sent).unwrap();
        assert_eq!(lay_over(cli_rules(), &rules).unwrap(), expected());
        assert_eq!(rules.to_pb(), sent);
        // Empty: the command line's and the built-in defaults.
        let empty = PolicyRules::from_pb(&pb::TracerRules::default()).unwrap();
        assert_eq!(empty, PolicyRules::default());
        assert_eq!(lay_over(cli_rules(), &empty).unwrap(), cli_rules());
    }

    #[test]
    fn bad_operator_rules_name_the_request_field() {
        let e = |r: pb::TracerRules| PolicyRules::from_pb(&r).unwrap_err().to_string();
        let m = e(pb::TracerRules {
            unmatched_routes: "Sometimes".into(),
            ..Default::default()
        });
        assert!(m.contains("tracer_rules.unmatched_routes"), "{m}");
        let m = e(pb::TracerRules {
            route_patterns: vec!["/a".into(); MAX_ROUTE_PATTERNS + 1],
            ..Default::default()
        });
        assert!(
            m.contains("tracer_rules.route_patterns: at most 128"),
            "{m}"
        );
        let m = e(pb::TracerRules {
            redact_headers: vec!["ok".into(), String::new()],
            ..Default::default()
        });
        assert!(m.contains("tracer_rules.redact_headers[1]"), "{m}");
        let bad = PolicyRules::from_pb(&pb::TracerRules {
            route_patterns: vec!["/ok".into(), "nope".into()],
            ..Default::default()
        })
        .unwrap();
        let m = lay_over(cli_rules(), &bad).unwrap_err().to_string();
        assert!(m.contains("routes.patterns[1]"), "{m}");
    }
}
