//! Prometheus text exposition read back by tests: samples with their
//! labels, and sums over the samples that match some labels. Pure; it
//! knows no metric names and does no I/O (fetch the text with
//! [`crate::http::get`]).

use std::collections::BTreeMap;

/// One sample: metric name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

/// Text exposition to samples (comments and blank lines skipped). Panics
/// on a line that is not `name{labels} value` or `name value`.
pub fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        for kv in labels.split("\",").filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once("=\"")
                .unwrap_or_else(|| panic!("label {kv:?} in {line:?}"));
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        let value = value
            .parse()
            .unwrap_or_else(|e| panic!("value of {line:?}: {e}"));
        out.push((name.to_string(), map, value));
    }
    out
}

/// Sum of the samples named `name` whose labels include `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP x_total things\n\
# TYPE x_total counter\n\
x_total{program=\"a\",side=\"server\"} 3\n\
x_total{program=\"a\",side=\"client\"} 4\n\
x_total{program=\"b\",side=\"server\",code=\"\"} 5\n\
\n\
up 1\n";

    #[test]
    fn samples_keep_names_labels_and_values() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 4);
        assert_eq!(s[3], ("up".into(), BTreeMap::new(), 1.0));
        assert_eq!(s[2].1["code"], "");
        assert_eq!(s[0].1["side"], "server");
    }

    #[test]
    fn sums_match_every_wanted_label() {
        let s = parse(TEXT);
        assert_eq!(sum(&s, "x_total", &[]), 12.0);
        assert_eq!(sum(&s, "x_total", &[("program", "a")]), 7.0);
        assert_eq!(sum(&s, "x_total", &[("side", "server")]), 8.0);
        assert_eq!(sum(&s, "x_total", &[("code", "")]), 5.0);
        assert_eq!(sum(&s, "x_total", &[("program", "c")]), 0.0);
        assert_eq!(sum(&s, "nothing", &[]), 0.0);
    }
}
