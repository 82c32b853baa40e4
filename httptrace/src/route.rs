//! Route naming with bounded cardinality: request paths become `http.route`
//! values from configured patterns, and unmatched paths are reduced to a
//! low-cardinality form so one noisy client cannot blow up the metric series.

use std::collections::HashSet;

/// What an unmatched path becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Unmatched {
    /// Segments that look like identifiers (numbers, UUIDs, long hex or
    /// random tokens) become `{id}`; at most three segments are kept, the
    /// rest become `*`. The default.
    #[default]
    Heuristic,
    /// Every unmatched path is `/*`.
    Wildcard,
}

/// A configured pattern: `/api/users/{id}/orders`, `/static/*`.
#[derive(Clone, Debug)]
struct Pattern {
    text: String,
    segments: Vec<Seg>,
}

#[derive(Clone, Debug)]
enum Seg {
    Literal(String),
    /// `{name}`: any one segment.
    Param,
    /// `*` as the last segment: anything below.
    Rest,
}

/// Maps paths to routes.
#[derive(Clone, Debug)]
pub struct Routes {
    patterns: Vec<Pattern>,
    unmatched: Unmatched,
    /// Distinct heuristic routes allowed; beyond it, `/*`.
    max_routes: usize,
    seen: HashSet<String>,
}

/// A pattern that cannot be used, with its position in the list.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRoute {
    pub index: usize,
    pub reason: &'static str,
}

impl std::fmt::Display for BadRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "routes[{}]: {}", self.index, self.reason)
    }
}

impl std::error::Error for BadRoute {}

impl Routes {
    pub fn new(
        patterns: &[&str],
        unmatched: Unmatched,
        max_routes: usize,
    ) -> Result<Self, BadRoute> {
        let mut parsed = Vec::with_capacity(patterns.len());
        for (index, p) in patterns.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(BadRoute {
                    index,
                    reason: "a route pattern starts with '/'",
                });
            }
            let parts: Vec<&str> = split(p).collect();
            let mut segments = Vec::with_capacity(parts.len());
            for (i, s) in parts.iter().enumerate() {
                segments.push(if *s == "*" {
                    if i + 1 != parts.len() {
                        return Err(BadRoute {
                            index,
                            reason: "'*' may only be the last segment",
                        });
                    }
                    Seg::Rest
                } else if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
                    Seg::Param
                } else if s.contains(['{', '}', '*']) {
                    return Err(BadRoute {
                        index,
                        reason: "a segment is a literal, {name} or a final *",
                    });
                } else {
                    Seg::Literal(s.to_string())
                });
            }
            parsed.push(Pattern {
                text: p.to_string(),
                segments,
            });
        }
        Ok(Self {
            patterns: parsed,
            unmatched,
            max_routes,
            seen: HashSet::new(),
        })
    }

    /// The first pattern that can never name a route because an earlier
    /// one matches every path it matches: (its index, the earlier one's).
    /// `/api/*` before `/api/users/{id}`, or the same pattern twice.
    pub fn first_unreachable(&self) -> Option<(usize, usize)> {
        self.patterns.iter().enumerate().find_map(|(j, later)| {
            self.patterns[..j]
                .iter()
                .position(|earlier| covers(&earlier.segments, &later.segments))
                .map(|i| (j, i))
        })
    }

    /// The route of a request target (query and fragment ignored).
    pub fn route(&mut self, target: &str) -> String {
        let path = target.split(['?', '#']).next().unwrap_or("/");
        // Absolute-form targets (proxies): keep the path part.
        let path = match path.find("://") {
            Some(i) => path[i + 3..].find('/').map_or("/", |j| &path[i + 3 + j..]),
            None => path,
        };
        let segs: Vec<&str> = split(path).collect();
        for p in &self.patterns {
            if matches(&p.segments, &segs) {
                return p.text.clone();
            }
        }
        match self.unmatched {
            Unmatched::Wildcard => "/*".to_string(),
            Unmatched::Heuristic => {
                let route = heuristic(&segs);
                if self.seen.contains(&route) {
                    route
                } else if self.seen.len() < self.max_routes {
                    self.seen.insert(route.clone());
                    route
                } else {
                    "/*".to_string()
                }
            }
        }
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn matches(pattern: &[Seg], segs: &[&str]) -> bool {
    let mut i = 0;
    for p in pattern {
        match p {
            Seg::Rest => return true,
            Seg::Param => {
                if i >= segs.len() {
                    return false;
                }
            }
            Seg::Literal(l) => {
                if segs.get(i) != Some(&l.as_str()) {
                    return false;
                }
            }
        }
        i += 1;
    }
    i == segs.len()
}

/// Whether every path `b` matches is matched by `a` too.
fn covers(a: &[Seg], b: &[Seg]) -> bool {
    for (k, sa) in a.iter().enumerate() {
        match (sa, b.get(k)) {
            (Seg::Rest, _) => return true,
            // `b` ends (its paths are shorter than `a` needs) or matches
            // any depth from here, which `a` does not.
            (_, None | Some(Seg::Rest)) => return false,
            (Seg::Param, Some(_)) => {}
            (Seg::Literal(x), Some(Seg::Literal(y))) if x == y => {}
            (Seg::Literal(_), Some(_)) => return false,
        }
    }
    a.len() == b.len()
}

const MAX_SEGMENTS: usize = 3;

fn heuristic(segs: &[&str]) -> String {
    if segs.is_empty() {
        return "/".to_string();
    }
    let mut out = String::new();
    for s in segs.iter().take(MAX_SEGMENTS) {
        out.push('/');
        out.push_str(if looks_like_id(s) { "{id}" } else { s });
    }
    if segs.len() > MAX_SEGMENTS {
        out.push_str("/*");
    }
    out
}

/// Numbers, UUIDs, hex of 8+ digits, and long mixed tokens are identifiers.
fn looks_like_id(s: &str) -> bool {
    let digits = s.bytes().filter(u8::is_ascii_digit).count();
    if digits == s.len() {
        return true;
    }
    let hexish = s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if hexish && s.len() >= 8 && digits > 0 {
        return true;
    }
    // Long tokens mixing letters and digits (base64 ids, hashes, slugs with ids).
    s.len() >= 16 && digits >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_win_in_order() {
        let mut r = Routes::new(
            &["/api/users/{id}", "/api/users/{id}/orders", "/static/*"],
            Unmatched::Heuristic,
            100,
        )
        .expect("valid");
        assert_eq!(r.route("/api/users/42?x=1"), "/api/users/{id}");
        assert_eq!(r.route("/api/users/42/orders"), "/api/users/{id}/orders");
        assert_eq!(r.route("/static/css/site.css"), "/static/*");
        assert_eq!(r.route("http://host:80/static/a"), "/static/*");
    }

    #[test]
    fn unmatched_paths_collapse_identifiers() {
        let mut r = Routes::new(&[], Unmatched::Heuristic, 100).expect("valid");
        assert_eq!(r.route("/"), "/");
        assert_eq!(r.route("/orders/12345"), "/orders/{id}");
        assert_eq!(
            r.route("/items/0b9f3c2e-1d4a-4c8e-9f00-1a2b3c4d5e6f/edit"),
            "/items/{id}/edit"
        );
        assert_eq!(r.route("/a/b/c/d/e"), "/a/b/c/*");
        assert_eq!(r.route("/health"), "/health");
    }

    #[test]
    fn heuristic_routes_are_capped() {
        let mut r = Routes::new(&[], Unmatched::Heuristic, 2).expect("valid");
        assert_eq!(r.route("/a"), "/a");
        assert_eq!(r.route("/b"), "/b");
        assert_eq!(r.route("/c"), "/*");
        assert_eq!(r.route("/a"), "/a", "known routes keep their name");
    }

    #[test]
    fn wildcard_policy() {
        let mut r = Routes::new(&["/x"], Unmatched::Wildcard, 10).expect("valid");
        assert_eq!(r.route("/x"), "/x");
        assert_eq!(r.route("/y/1"), "/*");
    }

    #[test]
    fn bad_patterns_name_the_entry() {
        let err = Routes::new(&["/ok", "/a/*/b"], Unmatched::Heuristic, 1).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "routes[1]: '*' may only be the last segment"
        );
        assert!(Routes::new(&["nope"], Unmatched::Heuristic, 1).is_err());
    }

    #[test]
    fn a_pattern_an_earlier_one_covers_is_unreachable() {
        let first = |p: &[&str]| {
            Routes::new(p, Unmatched::Heuristic, 10)
                .unwrap()
                .first_unreachable()
        };
        assert_eq!(first(&["/api/users/{id}", "/api/*", "/static/*"]), None);
        assert_eq!(first(&["/api/*", "/api/users/{id}"]), Some((1, 0)));
        assert_eq!(first(&["/a/{x}", "/b", "/a/{y}"]), Some((2, 0)));
        assert_eq!(first(&["/a/{x}", "/a/b"]), Some((1, 0)));
        // A literal does not cover a parameter, nor a shorter pattern a
        // longer one, nor a fixed depth a rest.
        assert_eq!(first(&["/a/b", "/a/{x}"]), None);
        assert_eq!(first(&["/a", "/a/b"]), None);
        assert_eq!(first(&["/a/{x}", "/a/*"]), None);
        assert_eq!(first(&["/*", "/anything/at/all"]), Some((1, 0)));
        // The check agrees with matching: whatever the later pattern's own
        // text matches, the earlier one matched first.
        let mut r = Routes::new(&["/api/*", "/api/users/{id}"], Unmatched::Wildcard, 10).unwrap();
        assert_eq!(r.route("/api/users/7"), "/api/*");
    }
}
