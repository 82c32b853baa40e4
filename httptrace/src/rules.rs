//! The tracer's rules in one structure: what is redacted and how request
//! paths become routes. A TracerPolicy's `spec.config.redaction` and
//! `spec.config.routes` map onto [`Rules`] field for field (the node agent
//! reads them from that policy's config and its own command line); a
//! reader compiles them once into a [`Redactor`] and a [`Routes`].

use crate::redact::{BadPattern, Redactor};
use crate::route::{BadRoute, Routes, Unmatched};

/// Distinct heuristic routes per reader when nothing else is configured.
pub const DEFAULT_MAX_ROUTES: usize = 200;

/// Redaction and route naming.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    pub redaction: RedactionRules,
    pub routes: RouteRules,
}

/// What is removed before an exchange exists (`spec.config.redaction`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RedactionRules {
    /// Header names (case-insensitive) whose values are replaced, added to
    /// the defaults.
    pub headers: Vec<String>,
    /// Query parameter names (case-insensitive, percent-decoded) whose
    /// values are replaced, added to the defaults.
    pub query_params: Vec<String>,
    /// Regular expressions; matching parts of command lines are replaced.
    pub command_line_patterns: Vec<String>,
    /// Drop the built-in defaults (only what is listed here is redacted).
    pub disable_defaults: bool,
}

/// How request paths become `http.route` values (`spec.config.routes`).
#[derive(Clone, Debug, PartialEq)]
pub struct RouteRules {
    /// `/api/users/{id}`, `/static/*`; the first match wins.
    pub patterns: Vec<String>,
    /// What paths no pattern matches become.
    pub unmatched: Unmatched,
    /// Distinct heuristic routes before unmatched paths become `/*`.
    pub max_routes: usize,
}

impl Default for RouteRules {
    fn default() -> Self {
        Self {
            patterns: Vec::new(),
            unmatched: Unmatched::Heuristic,
            max_routes: DEFAULT_MAX_ROUTES,
        }
    }
}

/// A rule that cannot be used, named by its place in the policy.
#[derive(Debug)]
pub enum BadRule {
    Redaction(BadPattern),
    Route(BadRoute),
}

impl std::fmt::Display for BadRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // BadPattern names `redaction.commandLinePatterns[i]` itself.
            Self::Redaction(e) => e.fmt(f),
            Self::Route(e) => write!(f, "routes.patterns[{}]: {}", e.index, e.reason),
        }
    }
}

impl std::error::Error for BadRule {}

impl Rules {
    /// The redactor these rules describe.
    pub fn redactor(&self) -> Result<Redactor, BadRule> {
        let r = &self.redaction;
        Redactor::new(
            &r.headers,
            &r.query_params,
            &r.command_line_patterns,
            r.disable_defaults,
        )
        .map_err(BadRule::Redaction)
    }

    /// A fresh route mapper (each reader has its own set of heuristic
    /// routes seen).
    pub fn routes(&self) -> Result<Routes, BadRule> {
        let patterns: Vec<&str> = self.routes.patterns.iter().map(String::as_str).collect();
        Routes::new(&patterns, self.routes.unmatched, self.routes.max_routes)
            .map_err(BadRule::Route)
    }

    /// Both compile.
    pub fn check(&self) -> Result<(), BadRule> {
        self.redactor()?;
        self.routes()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::redact::REDACTED;
    use crate::{Connection, Direction, Role, Segment};

    fn exchange(rules: &Rules, request: &[u8]) -> crate::Exchange {
        let mut c = Connection::new(Some(Role::Server), Arc::new(rules.redactor().unwrap()));
        assert!(
            c.feed(&Segment::full(1, Direction::Read, request))
                .is_empty()
        );
        let mut done = c.feed(&Segment::full(
            2,
            Direction::Write,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ));
        assert_eq!(done.len(), 1);
        done.remove(0)
    }

    #[test]
    fn custom_rules_apply_on_top_of_the_defaults() {
        let rules = Rules {
            redaction: RedactionRules {
                headers: vec!["X-Session".into()],
                query_params: vec!["sid".into()],
                ..Default::default()
            },
            routes: RouteRules {
                patterns: vec!["/carts/{id}".into()],
                ..Default::default()
            },
        };
        let e = exchange(
            &rules,
            b"GET /carts/77?sid=abc&token=t0k&x=1 HTTP/1.1\r\nX-Session: s3ss\r\nAuthorization: Bearer b3ar\r\n\r\n",
        );
        assert_eq!(
            e.target,
            format!("/carts/77?sid={REDACTED}&token={REDACTED}&x=1")
        );
        let values: Vec<&str> = e.request_headers.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, [REDACTED, REDACTED]);
        assert_eq!(rules.routes().unwrap().route(&e.target), "/carts/{id}");
    }

    #[test]
    fn defaults_off_keeps_only_listed_rules() {
        let rules = Rules {
            redaction: RedactionRules {
                query_params: vec!["sid".into()],
                disable_defaults: true,
                ..Default::default()
            },
            routes: RouteRules {
                unmatched: Unmatched::Wildcard,
                ..Default::default()
            },
        };
        let e = exchange(
            &rules,
            b"GET /a/b?sid=1&token=2 HTTP/1.1\r\nAuthorization: x\r\n\r\n",
        );
        assert_eq!(e.target, format!("/a/b?sid={REDACTED}&token=2"));
        assert_eq!(e.request_headers[0].1, "x");
        assert_eq!(rules.routes().unwrap().route("/a/b"), "/*");
    }

    #[test]
    fn errors_name_the_policy_field() {
        let bad_route = Rules {
            routes: RouteRules {
                patterns: vec!["/ok".into(), "no-slash".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            bad_route.check().unwrap_err().to_string(),
            "routes.patterns[1]: a route pattern starts with '/'"
        );
        let bad_pattern = Rules {
            redaction: RedactionRules {
                command_line_patterns: vec!["(".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(
            bad_pattern
                .check()
                .unwrap_err()
                .to_string()
                .starts_with("redaction.commandLinePatterns[0]:")
        );
    }
}
