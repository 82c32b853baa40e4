//! Target `rules`: arbitrary text read as an `--http-rules` document (a
//! TracerPolicy manifest or its `spec.config`, YAML or JSON), compiled
//! into a redactor and a route mapper, and those applied to a sample
//! request.
//!
//! Two readers of the text, which must agree: the agent's own,
//! `bpfleet_agent::http::rules::apply_policy` (what `--http-rules` runs,
//! here over no command-line rules), and this target's, which reads the
//! same documented fields with serde (serde_yaml, as the agent does, and
//! serde_json too). The agent accepts a document exactly when this reader
//! reads it and its rules compile, and then with the same [`Rules`]; a
//! JSON document the agent (a YAML reader) reads as well must give the same
//! rules. Downstream of the text, [`Rules::redactor`] and [`Rules::routes`]
//! (what [`Rules::check`] runs) and their use are fuzzed as well; the
//! built-in command-line regexes are compiled once per process by
//! `bpfleet_httptrace::redact` itself.
//!
//! Input layout: the document as UTF-8 (the agent reads the file as a
//! string: anything else is refused before parsing), then optionally a NUL
//! byte and a sample: its first line a request target, the next lines
//! `name: value` headers, the whole of it also a command line.
//!
//! Regex safety: command-line patterns are compiled with `regex::Regex::new`
//! (linear-time matching); the compile size limit is the `regex` crate's
//! default, not set by bpfleet. `tests/corpus.rs` asserts that a pattern
//! past it is refused.

use std::collections::HashSet;

use bpfleet_agent::error::Error as AgentError;
use bpfleet_agent::http::rules::apply_policy;
use bpfleet_httptrace::redact::{DEFAULT_HEADERS, DEFAULT_QUERY_PARAMS, REDACTED};
use bpfleet_httptrace::route::Unmatched;
use bpfleet_httptrace::rules::{BadRule, RedactionRules, RouteRules, Rules};
use serde::Deserialize;

use crate::http_segments::assert_query_redacted;

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

/// Runs one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let (text, sample) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let sample = String::from_utf8_lossy(sample);
    // The agent's own reader, over no command-line rules.
    let agent = apply_policy(Rules::default(), text);
    let yaml = serde_yaml::from_str::<Document>(text)
        .ok()
        .and_then(rules)
        .and_then(|r| exercise(r, &sample));
    agree("YAML", text, yaml.as_ref(), &agent);
    if let Ok(doc) = serde_json::from_str::<Document>(text) {
        let json = rules(doc).and_then(|r| exercise(r, &sample));
        // A JSON document is read by the agent as YAML: where the two
        // parsers read it alike, the agent takes it as JSON says.
        if serde_yaml::from_str::<serde_yaml::Value>(text).is_ok() {
            agree("JSON", text, json.as_ref(), &agent);
        }
    }
}

/// The agent accepts a document exactly when this reader does, with the
/// same rules.
fn agree(how: &str, text: &str, ours: Option<&Rules>, agent: &Result<Rules, AgentError>) {
    match (ours, agent) {
        (Some(ours), Ok(theirs)) => {
            assert_eq!(ours, theirs, "the agent read {how} {text:?} otherwise");
        }
        (None, Err(e)) => {
            assert!(
                e.to_string().contains("--http-rules"),
                "the agent's error does not name its flag: {e}"
            );
        }
        (Some(_), Err(e)) => panic!("the agent refused {how} {text:?}, read here: {e}"),
        (None, Ok(r)) => panic!("the agent took {how} {text:?}, refused here: {r:?}"),
    }
}

/// The rules a document describes, or `None` where the agent refuses it.
fn rules(doc: Document) -> Option<Rules> {
    let cfg = match doc {
        Document::Policy { spec } => spec.config,
        Document::Config(c) => c,
    };
    let unmatched = match cfg.routes.unmatched.map(|u| u.to_ascii_lowercase()) {
        None => Unmatched::default(),
        Some(u) if u == "heuristic" => Unmatched::Heuristic,
        Some(u) if u == "wildcard" => Unmatched::Wildcard,
        Some(_) => return None,
    };
    let max_routes = match cfg.routes.max_routes {
        None => RouteRules::default().max_routes,
        Some(m) => usize::try_from(m).ok().filter(|m| *m > 0)?,
    };
    Some(Rules {
        redaction: RedactionRules {
            headers: cfg.redaction.headers,
            query_params: cfg.redaction.query_params,
            command_line_patterns: cfg.redaction.command_line_patterns,
            disable_defaults: cfg.redaction.disable_defaults,
        },
        routes: RouteRules {
            patterns: cfg.routes.patterns,
            unmatched,
            max_routes,
        },
    })
}

/// Compiles the rules and applies them to the sample; the rules when they
/// compile (what `Rules::check` accepts).
fn exercise(rules: Rules, sample: &str) -> Option<Rules> {
    let redactor = rules.redactor();
    let routes = rules.routes();
    // An error names its place in the policy, inside the list.
    match (&redactor, &routes) {
        (Err(BadRule::Redaction(e)), _) => {
            assert!(e.index < rules.redaction.command_line_patterns.len(), "{e}");
        }
        (_, Err(BadRule::Route(e))) => {
            assert!(e.index < rules.routes.patterns.len(), "{e:?}");
        }
        (Err(e), _) | (_, Err(e)) => panic!("rule error from the wrong list: {e}"),
        (Ok(_), Ok(_)) => {}
    }
    let (Ok(redactor), Ok(mut routes)) = (redactor, routes) else {
        return None;
    };

    let mut lines = sample.lines();
    let target = lines.next().unwrap_or("/");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_string(), v.trim().to_string()))
        .collect();

    // Redaction: every listed header and query parameter, and the defaults
    // unless disabled, lose their values.
    let r = &rules.redaction;
    let mut header_names: Vec<&str> = r.headers.iter().map(String::as_str).collect();
    let mut param_names: Vec<&str> = r.query_params.iter().map(String::as_str).collect();
    if !r.disable_defaults {
        header_names.extend(DEFAULT_HEADERS);
        param_names.extend(DEFAULT_QUERY_PARAMS);
    }
    let redacted = redactor.headers(headers.clone());
    assert_eq!(redacted.len(), headers.len());
    for ((name, value), (rname, rvalue)) in headers.iter().zip(&redacted) {
        assert_eq!(name, rname, "a header was renamed");
        if header_names.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            assert_eq!(rvalue, REDACTED, "header {name} kept its value");
        } else {
            assert_eq!(rvalue, value, "header {name} was changed");
        }
    }
    let target_out = redactor.target(target);
    assert_query_redacted(&target_out, &param_names);
    assert_eq!(
        target_out.split('?').next(),
        target.split('?').next(),
        "redaction changed the path"
    );
    // A command line never grows by more than one `[REDACTED]` per byte,
    // whatever the patterns (regressions/rules/cmdline-empty-matches-*).
    let cmdline = redactor.cmdline(sample);
    assert!(
        cmdline.len() <= sample.len() * REDACTED.len(),
        "{} bytes of command line redacted into {}",
        sample.len(),
        cmdline.len()
    );

    // Routes: always a path, and bounded in number whatever the paths.
    let mut seen = HashSet::new();
    for path in std::iter::once(target).chain(sample.split_whitespace()) {
        let route = routes.route(path);
        assert!(route.starts_with('/'), "route {route:?} of {path:?}");
        seen.insert(route);
    }
    let bound = rules.routes.patterns.len() + rules.routes.max_routes + 1;
    assert!(
        seen.len() <= bound,
        "{} routes, at most {bound}",
        seen.len()
    );
    Some(rules)
}

/// An input of this target: a document and a sample request.
pub fn input(document: &str, sample: &str) -> Vec<u8> {
    let mut b = document.as_bytes().to_vec();
    if !sample.is_empty() {
        b.push(0);
        b.extend_from_slice(sample.as_bytes());
    }
    b
}
