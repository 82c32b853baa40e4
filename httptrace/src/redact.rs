//! Removal of sensitive data before anything leaves the parser: header
//! values, query parameter values and command-line secrets.
//!
//! Defaults cover the usual credentials; a TracerPolicy's `redaction` adds to
//! them (or, explicitly, turns them off).

use std::sync::LazyLock;

use regex::Regex;

/// What replaces a redacted value.
pub const REDACTED: &str = "[REDACTED]";

/// Headers whose values are always sensitive.
pub const DEFAULT_HEADERS: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
];

/// Query parameters whose values are sensitive (compared case-insensitively).
pub const DEFAULT_QUERY_PARAMS: [&str; 12] = [
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "api_key",
    "apikey",
    "key",
    "signature",
];

/// Command-line flags whose value is a secret: `--password x`, `--token=x`,
/// `-p x` is not covered (too ambiguous); `user:pass@` in URLs is.
const DEFAULT_CMDLINE: [&str; 2] = [
    r"(?i)(--?(?:password|passwd|pass|token|secret|api[-_]?key|auth)(?:=|\s+))\S+",
    r"(?i)([a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+(@)",
];

/// The default command-line patterns, compiled once per process: every
/// redactor with the defaults on starts from them, and compiling them took
/// longer than the rest of building one. A clone shares the compiled program.
fn builtin_cmdline() -> &'static [Regex] {
    static BUILTIN: LazyLock<Vec<Regex>> = LazyLock::new(|| {
        DEFAULT_CMDLINE
            .iter()
            .filter_map(|p| Regex::new(p).ok())
            .collect()
    });
    &BUILTIN
}

/// In a command line, a header as clients take it (`-H 'Authorization:
/// Bearer x'`): its name at the start of a word, the colon, spaces. The
/// value is read by [`header_value`]. The name is checked against the
/// redactor's header list in code, so one pattern serves every list.
fn header_name() -> Option<&'static Regex> {
    static RE: LazyLock<Option<Regex>> = LazyLock::new(|| {
        Regex::new(r#"(?:^|[\s"'=])([A-Za-z0-9!#$%&*+.^_`|~-]+)[ \t]*:[ \t]*"#).ok()
    });
    RE.as_ref()
}

/// In a command line, a URL's query parameter: its name and value.
fn query_param() -> Option<&'static Regex> {
    static RE: LazyLock<Option<Regex>> =
        LazyLock::new(|| Regex::new(r"[?&]([^=&#\s]+)=([^&#\s]*)").ok());
    RE.as_ref()
}

/// Authorization schemes kept before a credential (`Bearer [REDACTED]`).
const AUTH_SCHEMES: [&str; 6] = ["bearer", "basic", "digest", "negotiate", "token", "apikey"];

/// Where a header's value starts and ends in `line`, from `at` (just after
/// its colon): a known authorization scheme is kept, then the value runs
/// to the next space, and on over `; name=value` continuations, as a
/// cookie list has them. `None` when there is no value.
fn header_value(line: &str, at: usize) -> Option<(usize, usize)> {
    let rest = &line[at..];
    let word_end = |s: &str| {
        s.find(|c: char| c.is_whitespace() || c == ';')
            .unwrap_or(s.len())
    };
    let mut start = at;
    let first = &rest[..word_end(rest)];
    let after = &rest[first.len()..];
    if AUTH_SCHEMES.iter().any(|a| a.eq_ignore_ascii_case(first))
        && after.starts_with(|c: char| c.is_whitespace())
    {
        let credential = after.trim_start();
        if !credential.is_empty() && !credential.starts_with(';') {
            start = line.len() - credential.len();
        }
    }
    let mut end = start + word_end(&line[start..]);
    if end == start {
        return None;
    }
    // `a=1; b=2`: every cookie of the list.
    loop {
        let tail = &line[end..];
        let Some(next) = tail.strip_prefix(';') else {
            break;
        };
        let next = next.trim_start_matches([' ', '\t']);
        let w = word_end(next);
        if w == 0 {
            break;
        }
        end = line.len() - next.len() + w;
    }
    Some((start, end))
}

/// Redaction rules, built once per policy and shared by every connection.
#[derive(Debug)]
pub struct Redactor {
    headers: Vec<String>,
    query_params: Vec<String>,
    cmdline: Vec<Regex>,
}

/// A rule that does not compile, with its position in the policy list.
#[derive(Debug)]
pub struct BadPattern {
    pub index: usize,
    pub message: String,
}

impl std::error::Error for BadPattern {}

impl std::fmt::Display for BadPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "redaction.commandLinePatterns[{}]: {}",
            self.index, self.message
        )
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Redactor {
    /// The defaults alone.
    pub fn builtin() -> Self {
        Self {
            headers: DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect(),
            query_params: DEFAULT_QUERY_PARAMS.iter().map(|s| s.to_string()).collect(),
            cmdline: builtin_cmdline().to_vec(),
        }
    }

    /// Defaults (unless `disable_defaults`) plus the given names and patterns.
    pub fn new(
        headers: &[String],
        query_params: &[String],
        cmdline_patterns: &[String],
        disable_defaults: bool,
    ) -> Result<Self, BadPattern> {
        let mut r = if disable_defaults {
            Self {
                headers: Vec::new(),
                query_params: Vec::new(),
                cmdline: Vec::new(),
            }
        } else {
            Self::builtin()
        };
        r.headers
            .extend(headers.iter().map(|h| h.to_ascii_lowercase()));
        r.query_params
            .extend(query_params.iter().map(|q| q.to_ascii_lowercase()));
        for (index, p) in cmdline_patterns.iter().enumerate() {
            let re = Regex::new(p).map_err(|e| BadPattern {
                index,
                message: e.to_string(),
            })?;
            r.cmdline.push(re);
        }
        Ok(r)
    }

    /// Header list with sensitive values replaced.
    pub fn headers(&self, mut headers: Vec<(String, String)>) -> Vec<(String, String)> {
        for (name, value) in &mut headers {
            // `self.headers` is lower case; no lower-cased copy per header.
            if self.headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
                *value = REDACTED.to_string();
            }
        }
        headers
    }

    /// A request target with sensitive query values replaced.
    pub fn target(&self, target: &str) -> String {
        let Some((path, query)) = target.split_once('?') else {
            return target.to_string();
        };
        let (query, fragment) = match query.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (query, None),
        };
        let mut out = String::with_capacity(target.len());
        out.push_str(path);
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _)) if self.sensitive_param(k) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(pair),
            }
        }
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
        out
    }

    fn sensitive_param(&self, key: &str) -> bool {
        let key = percent_decode_lossy(key).to_ascii_lowercase();
        self.query_params.contains(&key)
    }

    /// A command line with secrets replaced.
    ///
    /// Every pattern is matched against the command line as given, never
    /// against another pattern's output: what a match covers, less its
    /// capture groups 1 (kept before: the flag) and 2 (kept after: a
    /// delimiter), is a secret. Overlapping or touching secrets merge, and
    /// each becomes one [`REDACTED`]; a match that leaves nothing between
    /// its groups (an empty match, say) redacts nothing. The output is
    /// therefore at most [`REDACTED`]'s length per input byte, whatever the
    /// patterns: applied one after another, a pattern that matches the empty
    /// string multiplied the line's length by eleven per pattern.
    pub fn cmdline(&self, cmdline: &str) -> String {
        let mut secrets: Vec<(usize, usize)> = Vec::new();
        for re in &self.cmdline {
            for caps in re.captures_iter(cmdline) {
                let Some(m) = caps.get(0) else { continue };
                let start = caps.get(1).map_or(m.start(), |g| g.end());
                let end = caps.get(2).map_or(m.end(), |g| g.start());
                if start < end {
                    secrets.push((start, end));
                }
            }
        }
        // The header and query rules hold on the command line too: `curl
        // -H 'Cookie: a=1' 'https://h/p?token=x'` loses both values.
        if let Some(re) = header_name() {
            for caps in re.captures_iter(cmdline) {
                let (Some(name), Some(m)) = (caps.get(1), caps.get(0)) else {
                    continue;
                };
                if self
                    .headers
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case(name.as_str()))
                    && let Some(span) = header_value(cmdline, m.end())
                {
                    secrets.push(span);
                }
            }
        }
        if let Some(re) = query_param() {
            for caps in re.captures_iter(cmdline) {
                if let (Some(k), Some(v)) = (caps.get(1), caps.get(2))
                    && !v.is_empty()
                    && self.sensitive_param(k.as_str())
                {
                    secrets.push((v.start(), v.end()));
                }
            }
        }
        secrets.sort_unstable();
        let mut out = String::with_capacity(cmdline.len());
        let mut kept = 0;
        let mut spans = secrets.into_iter().peekable();
        while let Some((start, mut end)) = spans.next() {
            while let Some(&(s, e)) = spans.peek() {
                if s > end {
                    break;
                }
                end = end.max(e);
                spans.next();
            }
            // Merged spans are sorted and disjoint: `start` is past `kept`
            // unless it starts where the last one ended.
            out.push_str(&cmdline[kept..start.max(kept)]);
            out.push_str(REDACTED);
            kept = end;
        }
        out.push_str(&cmdline[kept..]);
        out
    }
}

/// `%XX` decoding for parameter names, so `%74oken` is still `token`.
fn percent_decode_lossy(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_headers_are_redacted_case_insensitively() {
        let r = Redactor::builtin();
        let out = r.headers(vec![
            ("AUTHORIZATION".into(), "Bearer abc".into()),
            ("Cookie".into(), "sid=1".into()),
            ("Accept".into(), "*/*".into()),
        ]);
        assert_eq!(out[0].1, REDACTED);
        assert_eq!(out[1].1, REDACTED);
        assert_eq!(out[2].1, "*/*");
    }

    #[test]
    fn query_values_are_redacted_keys_kept() {
        let r = Redactor::new(&[], &["session".into()], &[], false).expect("valid");
        assert_eq!(
            r.target("/cb?code=1&Access_Token=s3cr3t&x=2&session=abc#frag"),
            "/cb?code=1&Access_Token=[REDACTED]&x=2&session=[REDACTED]#frag"
        );
        assert_eq!(r.target("/p?%74oken=zz"), "/p?%74oken=[REDACTED]");
        assert_eq!(r.target("/plain/path"), "/plain/path");
        assert_eq!(r.target("/p?flag&token"), "/p?flag&token");
    }

    #[test]
    fn command_line_secrets_are_redacted() {
        let r = Redactor::builtin();
        assert_eq!(
            r.cmdline("app --password hunter2 --token=abc --port 80"),
            "app --password [REDACTED] --token=[REDACTED] --port 80"
        );
        assert_eq!(
            r.cmdline("psql postgres://bob:pw123@db:5432/x"),
            "psql postgres://bob:[REDACTED]@db:5432/x"
        );
    }

    #[test]
    fn header_and_query_rules_hold_on_command_lines() {
        assert!(header_name().is_some() && query_param().is_some());
        let r = Redactor::new(&["X-Session".into()], &["sid".into()], &[], false).expect("valid");
        assert_eq!(
            r.cmdline("curl -H Authorization: Bearer abc.def -H Accept: */* http://h/p"),
            "curl -H Authorization: Bearer [REDACTED] -H Accept: */* http://h/p"
        );
        assert_eq!(
            r.cmdline("curl -H Cookie: session=s1; theme=dark -H x-session:hdr http://h/"),
            "curl -H Cookie: [REDACTED] -H x-session:[REDACTED] http://h/"
        );
        assert_eq!(
            r.cmdline("curl --header=authorization:tok http://h/a?sid=1&x=2&%74oken=3#f"),
            "curl --header=authorization:[REDACTED] http://h/a?sid=[REDACTED]&x=2&%74oken=[REDACTED]#f"
        );
        // A scheme with nothing after it is the value; no value, nothing.
        assert_eq!(
            r.cmdline("x authorization: bearer"),
            "x authorization: [REDACTED]"
        );
        assert_eq!(r.cmdline("x cookie: ;y"), "x cookie: ;y");
        assert_eq!(r.cmdline("cookie:"), "cookie:");
        // Not a header: a word that only ends in a header's name.
        assert_eq!(r.cmdline("my-cookie: 1"), "my-cookie: 1");
        let off = Redactor::new(&[], &[], &[], true).expect("valid");
        assert_eq!(
            off.cmdline("cookie: a http://h/?token=1"),
            "cookie: a http://h/?token=1"
        );
    }

    #[test]
    fn patterns_match_the_line_as_given_and_secrets_merge() {
        let r = Redactor::new(
            &[],
            &[],
            &["(--pin=)\\S+".into(), "secret".into(), "(k=)a(b)".into()],
            true,
        )
        .expect("compiles");
        // `secret` does not see the first pattern's output, and the two
        // overlapping secrets become one.
        assert_eq!(r.cmdline("x --pin=mysecretz y"), "x --pin=[REDACTED] y");
        assert_eq!(r.cmdline("secretsecret"), "[REDACTED]");
        // Groups 1 and 2 are kept, whatever surrounds them.
        assert_eq!(r.cmdline("k=ab"), "k=[REDACTED]b");
        assert_eq!(r.cmdline("nothing here"), "nothing here");
        // Multi-byte text around a secret stays whole.
        assert_eq!(r.cmdline("é secret ü"), "é [REDACTED] ü");
    }

    /// fuzz/regressions/rules/cmdline-empty-matches-grow-exponentially:
    /// eight patterns that match the empty string used to insert
    /// `[REDACTED]` between every two characters, each pattern into the
    /// last one's output: a 50-byte line grew to gigabytes (108 s).
    #[test]
    fn empty_matches_redact_nothing_and_the_line_stays_bounded() {
        let patterns: Vec<String> = (0..32).map(|i| format!("{i}|x{{0}}|^|a*|\\b")).collect();
        let r = Redactor::new(&[], &[], &patterns, true).expect("compiles");
        let line = "app --flag value 1 2 3 é";
        assert_eq!(
            r.cmdline(line),
            "app --flag value [REDACTED] [REDACTED] [REDACTED] é"
        );
        // `[REDACTED]` holds an `E`: a pattern never sees another's output.
        let r = Redactor::new(&[], &[], &vec!["E".to_string(); 32], false).expect("compiles");
        let line = "EEE --token=EEEE ".repeat(100);
        assert_eq!(
            r.cmdline(&line),
            "[REDACTED] --token=[REDACTED] ".repeat(100)
        );
    }

    #[test]
    fn every_default_pattern_compiles_once_and_is_shared() {
        assert_eq!(builtin_cmdline().len(), DEFAULT_CMDLINE.len());
        let (a, b) = (Redactor::builtin(), Redactor::default());
        assert_eq!(a.cmdline.len(), DEFAULT_CMDLINE.len());
        for (x, y) in a.cmdline.iter().zip(&b.cmdline) {
            assert_eq!(x.as_str(), y.as_str());
        }
        let custom = Redactor::new(&[], &[], &["--pin=\\S+".into()], false).expect("compiles");
        assert_eq!(custom.cmdline.len(), DEFAULT_CMDLINE.len() + 1);
        assert_eq!(
            custom.cmdline("x --token=t --pin=1"),
            "x --token=[REDACTED] [REDACTED]"
        );
    }

    #[test]
    fn custom_pattern_errors_name_the_rule() {
        let err = Redactor::new(&[], &[], &["ok".into(), "(".into()], false).expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("redaction.commandLinePatterns[1]:")
        );
    }

    #[test]
    fn defaults_can_be_disabled_explicitly() {
        let r = Redactor::new(&["x-secret".into()], &[], &[], true).expect("valid");
        let out = r.headers(vec![
            ("Authorization".into(), "a".into()),
            ("X-Secret".into(), "b".into()),
        ]);
        assert_eq!(out[0].1, "a");
        assert_eq!(out[1].1, REDACTED);
    }
}
