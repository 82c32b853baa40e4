//! In-process alert rules over the sliding windows: a rule fires when its
//! signal is above the threshold for a key, and resolves when it falls back;
//! only transitions are reported, so callers emit one event per change.

use std::collections::BTreeMap;

use crate::stats::{Window, Windows, summarize};

/// What a rule watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// errors / requests.
    ErrorRate,
    /// 99th percentile latency, in seconds.
    P99Latency,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub signal: Signal,
    pub threshold: f64,
    pub window: Window,
    /// Fewer requests than this in the window never fire (too little data).
    pub min_requests: u64,
}

/// A change of an alert's state for one key.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition<K> {
    Firing { rule: String, key: K, value: f64 },
    Resolved { rule: String, key: K, value: f64 },
}

/// Which (rule, key) pairs are firing, since when.
#[derive(Debug)]
pub struct Alerts<K: Ord + Clone> {
    firing: BTreeMap<(String, K), u64>,
}

impl<K: Ord + Clone> Default for Alerts<K> {
    fn default() -> Self {
        Self {
            firing: BTreeMap::new(),
        }
    }
}

/// The value of `rule`'s signal for `key` at `now_ns`, and whether it is
/// breached (above the threshold with at least `min_requests` requests).
pub fn check<K: Ord + Clone>(
    rule: &Rule,
    windows: &Windows<K>,
    key: &K,
    now_ns: u64,
) -> (bool, f64) {
    let s = summarize(rule.window, &windows.merged(key, rule.window, now_ns));
    let value = match rule.signal {
        Signal::ErrorRate => Some(s.error_rate),
        Signal::P99Latency => s.p99_ns.map(|ns| ns as f64 / 1e9),
    };
    let breach = s.requests >= rule.min_requests && value.is_some_and(|v| v > rule.threshold);
    (breach, value.unwrap_or(0.0))
}

/// Every (rule index, key, value) breached at `now_ns`: the stateless
/// half of [`Alerts::evaluate`], for callers that keep their own state.
pub fn breached<K: Ord + Clone>(
    rules: &[Rule],
    windows: &Windows<K>,
    now_ns: u64,
) -> Vec<(usize, K, f64)> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        for key in windows.keys() {
            if let (true, value) = check(rule, windows, key, now_ns) {
                out.push((i, key.clone(), value));
            }
        }
    }
    out
}

impl<K: Ord + Clone> Alerts<K> {
    /// Evaluates every rule for every key at `now_ns`.
    pub fn evaluate(
        &mut self,
        rules: &[Rule],
        windows: &Windows<K>,
        now_ns: u64,
    ) -> Vec<Transition<K>> {
        let mut out = Vec::new();
        let keys: Vec<K> = windows.keys().cloned().collect();
        for rule in rules {
            for key in &keys {
                let (breach, value) = check(rule, windows, key, now_ns);
                let id = (rule.name.clone(), key.clone());
                let was = self.firing.contains_key(&id);
                if breach && !was {
                    self.firing.insert(id, now_ns);
                    out.push(Transition::Firing {
                        rule: rule.name.clone(),
                        key: key.clone(),
                        value,
                    });
                } else if !breach && was {
                    self.firing.remove(&id);
                    out.push(Transition::Resolved {
                        rule: rule.name.clone(),
                        key: key.clone(),
                        value,
                    });
                }
            }
        }
        // Keys that vanished (expired) resolve too.
        let live: std::collections::BTreeSet<&K> = keys.iter().collect();
        let gone: Vec<(String, K)> = self
            .firing
            .keys()
            .filter(|(_, k)| !live.contains(k))
            .cloned()
            .collect();
        for (rule, key) in gone {
            self.firing.remove(&(rule.clone(), key.clone()));
            out.push(Transition::Resolved {
                rule,
                key,
                value: 0.0,
            });
        }
        out
    }

    /// Number of (rule, key) pairs firing now.
    pub fn firing(&self) -> usize {
        self.firing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn fires_once_and_resolves_once() {
        let rules = [Rule {
            name: "HighErrorRate".into(),
            signal: Signal::ErrorRate,
            threshold: 0.05,
            window: Window::OneMinute,
            min_requests: 10,
        }];
        let mut w: Windows<&str> = Windows::new(10, "other");
        let mut a = Alerts::default();
        // 5 requests all failing: below min_requests, no alert.
        for i in 0..5 {
            w.record("shop", 1000 * S + i, 1, true);
        }
        assert!(a.evaluate(&rules, &w, 1000 * S).is_empty());
        for i in 0..20 {
            w.record("shop", 1001 * S + i, 1, i % 2 == 0);
        }
        let t = a.evaluate(&rules, &w, 1002 * S);
        assert!(
            matches!(&t[..], [Transition::Firing { rule, key: "shop", .. }] if rule == "HighErrorRate")
        );
        assert!(
            a.evaluate(&rules, &w, 1003 * S).is_empty(),
            "no repeat while firing"
        );
        assert_eq!(a.firing(), 1);
        // Healthy traffic two minutes later: resolves.
        for i in 0..50 {
            w.record("shop", 1130 * S + i, 1, false);
        }
        let t = a.evaluate(&rules, &w, 1131 * S);
        assert!(matches!(&t[..], [Transition::Resolved { key: "shop", .. }]));
    }

    #[test]
    fn p99_latency_rule() {
        let rules = [Rule {
            name: "Slow".into(),
            signal: Signal::P99Latency,
            threshold: 0.5,
            window: Window::FiveMinutes,
            min_requests: 1,
        }];
        let mut w: Windows<&str> = Windows::new(10, "other");
        for _ in 0..100 {
            w.record("api", 10 * S, 2 * S, false);
        }
        let mut a = Alerts::default();
        match &a.evaluate(&rules, &w, 11 * S)[..] {
            [Transition::Firing { value, .. }] => assert!((value - 2.0).abs() < 0.13),
            other => panic!("{other:?}"),
        }
    }
}
