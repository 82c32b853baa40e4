//! The command line's alert rules: the defaults and the
//! `NAME=SIGNAL>THRESHOLD/WINDOW[/MIN_REQUESTS]` syntax. Pure parsing;
//! the rules are evaluated by the [`super::Hub`].

use bpfleet_httptrace::alerts::{Rule, Signal};
use bpfleet_httptrace::stats::Window;

use crate::error::{Error, Result};

/// Error rate above 5 % or p99 above 1 s over five minutes, with at least
/// 20 requests.
pub fn default_rules() -> Vec<Rule> {
    vec![
        Rule {
            name: "HttpHighErrorRate".into(),
            signal: Signal::ErrorRate,
            threshold: 0.05,
            window: Window::FiveMinutes,
            min_requests: 20,
        },
        Rule {
            name: "HttpHighLatencyP99".into(),
            signal: Signal::P99Latency,
            threshold: 1.0,
            window: Window::FiveMinutes,
            min_requests: 20,
        },
    ]
}

/// Parses `NAME=SIGNAL>THRESHOLD/WINDOW[/MIN_REQUESTS]`, e.g.
/// `HighErrors=error_rate>0.05/5m/20` or `Slow=p99>0.5/1m` (seconds).
pub fn parse_rule(s: &str) -> Result<Rule> {
    let bad = |why: &str| {
        Error::Invalid(format!(
            "alert rule {s:?}: {why} (NAME=error_rate|p99>THRESHOLD/1m|5m|15m|1h[/MIN_REQUESTS])"
        ))
    };
    let (name, rest) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(bad("the name is letters, digits and '_'"));
    }
    let (signal, rest) = rest.split_once('>').ok_or_else(|| bad("no '>'"))?;
    let signal = match signal {
        "error_rate" => Signal::ErrorRate,
        "p99" => Signal::P99Latency,
        _ => return Err(bad("unknown signal")),
    };
    let mut parts = rest.split('/');
    let threshold: f64 = parts
        .next()
        .and_then(|t| t.parse().ok())
        .filter(|t: &f64| t.is_finite() && *t >= 0.0)
        .ok_or_else(|| bad("the threshold is a non-negative number"))?;
    let window = match parts.next() {
        Some(w) => Window::ALL
            .into_iter()
            .find(|x| x.label() == w)
            .ok_or_else(|| bad("unknown window"))?,
        None => return Err(bad("no window")),
    };
    let min_requests = match parts.next() {
        Some(m) => m.parse().map_err(|_| bad("MIN_REQUESTS is a count"))?,
        None => 1,
    };
    if parts.next().is_some() {
        return Err(bad("too many '/'"));
    }
    Ok(Rule {
        name: name.to_string(),
        signal,
        threshold,
        window,
        min_requests,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_bad_ones_say_why() {
        let r = parse_rule("HighErrors=error_rate>0.05/5m/20").unwrap();
        assert_eq!(r.signal, Signal::ErrorRate);
        assert_eq!(r.window, Window::FiveMinutes);
        assert_eq!((r.threshold, r.min_requests), (0.05, 20));
        let r = parse_rule("Slow=p99>0.5/1m").unwrap();
        assert_eq!((r.signal, r.min_requests), (Signal::P99Latency, 1));
        for bad in [
            "x",
            "=error_rate>1/1m",
            "a b=p99>1/1m",
            "a=cpu>1/1m",
            "a=p99>-1/1m",
            "a=p99>NaN/1m",
            "a=p99>1/2m",
            "a=p99>1",
            "a=p99>1/1m/x",
            "a=p99>1/1m/1/2",
        ] {
            let e = parse_rule(bad).unwrap_err().to_string();
            assert!(e.contains("alert rule"), "{bad}: {e}");
        }
    }
}
