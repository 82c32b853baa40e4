//! A TracerPolicy's alerts (`spec.alerts`) on this node: the rules as
//! UpdateConfig gives them (checked here, at the edge, and kept per program
//! in the state file), and the [`Board`] of what fires now.
//!
//! Two evaluators publish into the board, each the whole set of what fires
//! for one program and one kind of signal: the HTTP tracer's hub (error
//! rate and p99 latency over the program's own windows of exchanges, per
//! service, route and side) and the agent's usage sampler (CPU overhead,
//! events lost, program errors over windows of the program's kernel
//! figures, [`kernel_breaches`] on [`crate::agent::usage`]). The board compares with what fired
//! before and reports each change once: a log line, an audit line, the
//! transitions counter. List (`ProgramInfo.firing_alerts`), `/api/health`
//! and `/metrics` read the board. No kernel calls here.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use bpfleet_httptrace::alerts::{Rule, Signal as HttpSignal};
use bpfleet_httptrace::stats::Window;
use bpfleet_proto::v1 as pb;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use crate::audit::Audit;
use crate::error::{Error, Result};

/// Most alert rules one program holds (the CRD allows 32 per policy).
pub const MAX_RULES: usize = 32;
/// Requests an HTTP rule needs in its window before it can fire, when the
/// rule gives none: the command-line rules' default.
pub const DEFAULT_MIN_REQUESTS: u64 = 20;

/// What a policy alert watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Signal {
    /// Failed exchanges / exchanges (server: 5xx and no answer; client:
    /// also 4xx), 0..1.
    ErrorRate,
    /// 99th percentile latency of exchanges, seconds.
    P99Latency,
    /// Time in the program's BPF programs as a share of one CPU, percent.
    CpuOverheadPercent,
    /// Events the program's kernel side dropped (ring buffer full), count
    /// in the window.
    EventsLost,
    /// Errors the program reported (`bpfleet_errors`), count in the window.
    ProgramErrors,
}

impl Signal {
    pub const ALL: [Signal; 5] = [
        Signal::ErrorRate,
        Signal::P99Latency,
        Signal::CpuOverheadPercent,
        Signal::EventsLost,
        Signal::ProgramErrors,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::ErrorRate => "ErrorRate",
            Signal::P99Latency => "P99Latency",
            Signal::CpuOverheadPercent => "CpuOverheadPercent",
            Signal::EventsLost => "EventsLost",
            Signal::ProgramErrors => "ProgramErrors",
        }
    }

    /// Evaluated by the HTTP tracer's hub (else by the kernel evaluator).
    pub fn is_http(self) -> bool {
        matches!(self, Signal::ErrorRate | Signal::P99Latency)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "Warning",
            Severity::Critical => "Critical",
        }
    }
}

/// One checked alert rule of a program's TracerPolicy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyAlert {
    pub name: String,
    /// The TracerPolicy it comes from (for labels; may be empty).
    #[serde(default)]
    pub policy: String,
    pub signal: Signal,
    pub threshold: f64,
    /// `1m`, `5m`, `15m` or `1h`.
    pub window: String,
    pub severity: Severity,
    /// HTTP signals: fewer requests in the window never fire.
    pub min_requests: u64,
}

fn window_of(label: &str) -> Option<Window> {
    Window::ALL.into_iter().find(|w| w.label() == label)
}

impl PolicyAlert {
    /// The window this rule is computed over.
    pub fn window(&self) -> Window {
        // Checked by `from_pb`; a state file edited by hand falls back to
        // the CRD's default.
        window_of(&self.window).unwrap_or(Window::FiveMinutes)
    }

    /// The HTTP tracer's rule of an HTTP signal.
    pub fn http_rule(&self) -> Option<Rule> {
        let signal = match self.signal {
            Signal::ErrorRate => HttpSignal::ErrorRate,
            Signal::P99Latency => HttpSignal::P99Latency,
            _ => return None,
        };
        Some(Rule {
            name: self.name.clone(),
            signal,
            threshold: self.threshold,
            window: self.window(),
            min_requests: self.min_requests,
        })
    }

    pub fn to_pb(&self) -> pb::PolicyAlert {
        pb::PolicyAlert {
            name: self.name.clone(),
            signal: self.signal.as_str().into(),
            threshold: self.threshold,
            window: self.window.clone(),
            severity: self.severity.as_str().into(),
            policy: self.policy.clone(),
            min_requests: self.min_requests,
        }
    }
}

/// UpdateConfig's `alerts`, checked; errors name the request's field.
pub fn from_pb(rules: &pb::AlertRules) -> Result<Vec<PolicyAlert>> {
    if rules.rules.len() > MAX_RULES {
        return Err(Error::Invalid(format!(
            "alerts.rules: at most {MAX_RULES}, got {}",
            rules.rules.len()
        )));
    }
    let mut out: Vec<PolicyAlert> = Vec::with_capacity(rules.rules.len());
    for (i, r) in rules.rules.iter().enumerate() {
        let bad =
            |field: &str, why: String| Error::Invalid(format!("alerts.rules[{i}].{field}: {why}"));
        let name_ok = (1..=63).contains(&r.name.len())
            && r.name.starts_with(|c: char| c.is_ascii_alphabetic())
            && r.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !name_ok {
            return Err(bad(
                "name",
                format!(
                    "{:?} is not an alert name (1-63 letters, digits, '_' and '-', a letter first)",
                    r.name
                ),
            ));
        }
        if out.iter().any(|a| a.name == r.name) {
            return Err(bad(
                "name",
                format!("{:?} is used by an earlier rule", r.name),
            ));
        }
        let signal = Signal::ALL
            .into_iter()
            .find(|s| s.as_str() == r.signal)
            .ok_or_else(|| {
                bad(
                    "signal",
                    format!(
                        "{:?} is not one of ErrorRate, P99Latency, CpuOverheadPercent, EventsLost, ProgramErrors",
                        r.signal
                    ),
                )
            })?;
        if !r.threshold.is_finite() || r.threshold < 0.0 {
            return Err(bad(
                "threshold",
                format!("{} is not a finite number >= 0", r.threshold),
            ));
        }
        if window_of(&r.window).is_none() {
            return Err(bad(
                "window",
                format!("{:?} is not one of 1m, 5m, 15m, 1h", r.window),
            ));
        }
        let severity = match r.severity.as_str() {
            "Warning" => Severity::Warning,
            "Critical" => Severity::Critical,
            other => {
                return Err(bad(
                    "severity",
                    format!("{other:?} is not Warning or Critical"),
                ));
            }
        };
        if r.policy.len() > 253 {
            return Err(bad("policy", "longer than 253 bytes".into()));
        }
        out.push(PolicyAlert {
            name: r.name.clone(),
            policy: r.policy.clone(),
            signal,
            threshold: r.threshold,
            window: r.window.clone(),
            severity,
            min_requests: if r.min_requests == 0 {
                DEFAULT_MIN_REQUESTS
            } else {
                r.min_requests
            },
        });
    }
    Ok(out)
}

/// A program's kernel figures over one window, as the usage sampler has
/// them (None: not known yet, or not counted by the program).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct KernelFigures {
    /// Over the whole window only.
    pub cpu_percent: Option<f64>,
    /// Over the window, or over what was sampled so far when that is
    /// shorter (a lower bound).
    pub errors: Option<u64>,
    pub lost: Option<u64>,
}

/// The kernel-signal rules of `rules` breached now; `figures` gives the
/// program's figures over a window.
pub fn kernel_breaches(
    rules: &[PolicyAlert],
    figures: impl Fn(Window) -> KernelFigures,
) -> Vec<Breach> {
    let mut out = Vec::new();
    for r in rules.iter().filter(|r| !r.signal.is_http()) {
        let f = figures(r.window());
        let value = match r.signal {
            Signal::CpuOverheadPercent => f.cpu_percent,
            Signal::ProgramErrors => f.errors.map(|e| e as f64),
            Signal::EventsLost => f.lost.map(|l| l as f64),
            Signal::ErrorRate | Signal::P99Latency => None,
        };
        if let Some(v) = value.filter(|v| *v > r.threshold) {
            out.push(Breach {
                rule: r.clone(),
                series: Default::default(),
                value: v,
            });
        }
    }
    out
}

/// Which part of the agent evaluates a signal; each publishes its own
/// part of a program's firing set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Http,
    Kernel,
}

/// An alert breached now, as an evaluator finds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Breach {
    pub rule: PolicyAlert,
    /// HTTP signals: (service, route, side); kernel signals: empty.
    pub series: (String, String, String),
    pub value: f64,
}

/// A firing alert on the board.
#[derive(Clone, Debug, PartialEq)]
pub struct Firing {
    pub breach: Breach,
    /// Unix seconds when it started firing.
    pub since_unix: u64,
}

impl Firing {
    pub fn to_pb(&self) -> pb::FiringAlert {
        let b = &self.breach;
        pb::FiringAlert {
            name: b.rule.name.clone(),
            severity: b.rule.severity.as_str().into(),
            signal: b.rule.signal.as_str().into(),
            value: b.value,
            threshold: b.rule.threshold,
            window: b.rule.window.clone(),
            since_unix: self.since_unix,
            service: b.series.0.clone(),
            route: b.series.1.clone(),
            side: b.series.2.clone(),
            policy: b.rule.policy.clone(),
        }
    }
}

/// (program, source) -> (rule name, series) -> firing.
type Fired = BTreeMap<(String, Source), BTreeMap<(String, (String, String, String)), Firing>>;

/// What fires on this node, per program; see the module doc.
#[derive(Debug, Default)]
pub struct Board {
    fired: Mutex<Fired>,
    audit: Audit,
    /// `bpfleet_agent_policy_alert_transitions` by program, policy,
    /// alertname, severity and state (firing, resolved).
    transitions: Family<Vec<(String, String)>, Counter>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Board {
    /// A board that writes its transitions to `audit`.
    pub fn new(audit: Audit) -> Self {
        Self {
            fired: Mutex::new(BTreeMap::new()),
            audit,
            transitions: Family::default(),
        }
    }

    pub fn transitions(&self) -> &Family<Vec<(String, String)>, Counter> {
        &self.transitions
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fired> {
        // The map is replaced whole per (program, source): a panic while
        // holding the lock leaves a consistent board.
        self.fired.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything `source` finds breached for `program` now; what was
    /// firing before and is not in `now` resolves. Returns the number of
    /// transitions.
    pub fn publish(&self, program: &str, source: Source, now: Vec<Breach>) -> usize {
        let mut fired = self.lock();
        let before = fired
            .remove(&(program.to_string(), source))
            .unwrap_or_default();
        let mut after = BTreeMap::new();
        let mut changes = 0;
        for b in now {
            let id = (b.rule.name.clone(), b.series.clone());
            let since_unix = match before.get(&id) {
                Some(f) => f.since_unix,
                None => {
                    changes += 1;
                    self.report(program, &b, "firing");
                    unix_now()
                }
            };
            after.insert(
                id,
                Firing {
                    breach: b,
                    since_unix,
                },
            );
        }
        for (id, f) in &before {
            if !after.contains_key(id) {
                changes += 1;
                self.report(program, &f.breach, "resolved");
            }
        }
        if !after.is_empty() {
            fired.insert((program.to_string(), source), after);
        }
        changes
    }

    /// Forgets programs not in `programs` (unloaded): what fired for them
    /// resolves.
    pub fn retain(&self, programs: &[String]) {
        let gone: Vec<(String, Source)> = self
            .lock()
            .keys()
            .filter(|(p, _)| !programs.contains(p))
            .cloned()
            .collect();
        for (p, s) in gone {
            self.publish(&p, s, Vec::new());
        }
    }

    /// What fires for `program` now, by rule name and series.
    pub fn firing(&self, program: &str) -> Vec<Firing> {
        let fired = self.lock();
        let mut out: Vec<Firing> = fired
            .iter()
            .filter(|((p, _), _)| p == program)
            .flat_map(|(_, m)| m.values().cloned())
            .collect();
        out.sort_by(|a, b| {
            (&a.breach.rule.name, &a.breach.series).cmp(&(&b.breach.rule.name, &b.breach.series))
        });
        out
    }

    /// Every program's firing alerts.
    pub fn all(&self) -> BTreeMap<String, Vec<Firing>> {
        let programs: Vec<String> = self.lock().keys().map(|(p, _)| p.clone()).collect();
        programs
            .into_iter()
            .map(|p| {
                let f = self.firing(&p);
                (p, f)
            })
            .collect()
    }

    /// A transition's log line, audit line and count.
    fn report(&self, program: &str, b: &Breach, state: &str) {
        let r = &b.rule;
        let (service, route, side) = &b.series;
        if state == "firing" {
            tracing::warn!(
                program,
                policy = r.policy,
                alertname = r.name,
                severity = r.severity.as_str(),
                signal = r.signal.as_str(),
                value = b.value,
                threshold = r.threshold,
                window = r.window,
                service,
                route,
                side,
                "policy alert firing"
            );
        } else {
            tracing::info!(
                program,
                policy = r.policy,
                alertname = r.name,
                severity = r.severity.as_str(),
                signal = r.signal.as_str(),
                value = b.value,
                "policy alert resolved"
            );
        }
        let series = if service.is_empty() && route.is_empty() {
            String::new()
        } else {
            format!(" on {service} {route} ({side})")
        };
        let what = if state == "firing" {
            format!("{} {} > {}", r.signal.as_str(), b.value, r.threshold)
        } else {
            format!(
                "{} back to at most {} (was {})",
                r.signal.as_str(),
                r.threshold,
                b.value
            )
        };
        let detail = format!(
            "alert {} ({}, policy {}): {what} over {}{series}",
            r.name,
            r.severity.as_str(),
            r.policy,
            r.window,
        );
        self.audit
            .write("agent", "policy_alert", program, "", state, &detail);
        self.transitions
            .get_or_create(&vec![
                ("program".into(), program.into()),
                ("policy".into(), r.policy.clone()),
                ("alertname".into(), r.name.clone()),
                ("severity".into(), r.severity.as_str().into()),
                ("state".into(), state.into()),
            ])
            .inc();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rule(name: &str, signal: &str) -> pb::PolicyAlert {
        pb::PolicyAlert {
            name: name.into(),
            signal: signal.into(),
            threshold: 0.1,
            window: "1m".into(),
            severity: "Critical".into(),
            policy: "pol".into(),
            min_requests: 0,
        }
    }

    #[test]
    fn rules_convert_and_bad_ones_name_the_field() {
        let sent = pb::AlertRules {
            rules: vec![
                rule("HighErrors", "ErrorRate"),
                rule("Faults", "ProgramErrors"),
            ],
        };
        let got = from_pb(&sent).unwrap();
        assert_eq!(got[0].signal, Signal::ErrorRate);
        assert_eq!(got[0].window(), Window::OneMinute);
        assert_eq!(got[0].severity, Severity::Critical);
        assert_eq!(got[0].min_requests, DEFAULT_MIN_REQUESTS, "0: the default");
        assert!(got[0].http_rule().is_some() && got[1].http_rule().is_none());
        let mut back = sent.clone();
        back.rules[0].min_requests = DEFAULT_MIN_REQUESTS;
        back.rules[1].min_requests = DEFAULT_MIN_REQUESTS;
        assert_eq!(
            got.iter().map(PolicyAlert::to_pb).collect::<Vec<_>>(),
            back.rules
        );
        let e = |f: &dyn Fn(&mut pb::PolicyAlert)| {
            let mut r = sent.clone();
            f(&mut r.rules[1]);
            from_pb(&r).unwrap_err().to_string()
        };
        for (want, f) in [
            (
                "alerts.rules[1].name",
                &(|r: &mut pb::PolicyAlert| r.name = "1x".into()) as &dyn Fn(&mut pb::PolicyAlert),
            ),
            ("alerts.rules[1].name", &|r| r.name = "HighErrors".into()),
            ("alerts.rules[1].signal", &|r| r.signal = "Cpu".into()),
            ("alerts.rules[1].threshold", &|r| r.threshold = f64::NAN),
            ("alerts.rules[1].threshold", &|r| r.threshold = -1.0),
            ("alerts.rules[1].window", &|r| r.window = "2m".into()),
            ("alerts.rules[1].severity", &|r| r.severity = "Info".into()),
        ] {
            let msg = e(f);
            assert!(msg.contains(want), "{want}: {msg}");
        }
        let many = pb::AlertRules {
            rules: (0..=MAX_RULES)
                .map(|i| rule(&format!("a{i}"), "ErrorRate"))
                .collect(),
        };
        assert!(
            from_pb(&many)
                .unwrap_err()
                .to_string()
                .contains("alerts.rules: at most")
        );
    }

    #[test]
    fn kernel_signals_fire_above_their_threshold_over_their_window() {
        let mut rules = from_pb(&pb::AlertRules {
            rules: vec![
                rule("Faults", "ProgramErrors"),
                rule("Lost", "EventsLost"),
                rule("Cpu", "CpuOverheadPercent"),
                rule("Errors", "ErrorRate"),
            ],
        })
        .unwrap();
        rules[2].window = "5m".into();
        let figures = |w: Window| KernelFigures {
            cpu_percent: (w == Window::FiveMinutes).then_some(2.0),
            errors: Some(3),
            lost: None,
        };
        let b = kernel_breaches(&rules, figures);
        let names: Vec<(&str, f64)> = b.iter().map(|b| (b.rule.name.as_str(), b.value)).collect();
        assert_eq!(names, [("Faults", 3.0), ("Cpu", 2.0)]);
        // At the threshold is not above it; unknown figures never fire.
        rules[0].threshold = 3.0;
        let b = kernel_breaches(&rules, |_| KernelFigures {
            errors: Some(3),
            ..Default::default()
        });
        assert!(b.is_empty(), "{b:?}");
    }

    fn breach(name: &str, value: f64) -> Breach {
        let rule = from_pb(&pb::AlertRules {
            rules: vec![rule(name, "ProgramErrors")],
        })
        .unwrap()
        .remove(0);
        Breach {
            rule,
            series: Default::default(),
            value,
        }
    }

    fn count(board: &Board, name: &str, state: &str) -> u64 {
        board
            .transitions()
            .get_or_create(&vec![
                ("program".into(), "p".into()),
                ("policy".into(), "pol".into()),
                ("alertname".into(), name.into()),
                ("severity".into(), "Critical".into()),
                ("state".into(), state.into()),
            ])
            .get()
    }

    #[test]
    fn the_board_reports_each_change_once_and_keeps_since() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let board = Board::new(Audit::new(Some(&log)).unwrap());
        assert_eq!(
            board.publish("p", Source::Kernel, vec![breach("A", 3.0)]),
            1
        );
        let since = board.firing("p")[0].since_unix;
        assert!(since > 0);
        // Still breached, a new value: no transition, same start.
        assert_eq!(
            board.publish("p", Source::Kernel, vec![breach("A", 5.0)]),
            0
        );
        assert_eq!(board.firing("p")[0].breach.value, 5.0);
        assert_eq!(board.firing("p")[0].since_unix, since);
        // The other source's set is its own.
        assert_eq!(board.publish("p", Source::Http, Vec::new()), 0);
        assert_eq!(board.firing("p").len(), 1);
        assert_eq!(board.publish("p", Source::Kernel, Vec::new()), 1);
        assert!(board.firing("p").is_empty());
        assert_eq!(
            (count(&board, "A", "firing"), count(&board, "A", "resolved")),
            (1, 1)
        );
        // An unloaded program's alerts resolve.
        board.publish("p", Source::Kernel, vec![breach("B", 1.0)]);
        board.retain(&[]);
        assert!(board.all().is_empty());
        assert_eq!(count(&board, "B", "resolved"), 1);
        let audit = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = audit.lines().collect();
        assert_eq!(lines.len(), 4, "{audit}");
        assert!(
            lines[0].contains(r#""action":"policy_alert""#)
                && lines[0].contains(r#""result":"firing""#)
        );
        assert!(
            lines[0].contains("alert A (Critical, policy pol): ProgramErrors 3 > 0.1 over 1m"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains(r#""result":"resolved""#));
    }
}
