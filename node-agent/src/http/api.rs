//! The agent's HTTP API, served next to `/metrics`: `/api/health`
//! (liveness and readiness of the agent and of every tracer reader, and
//! the programs' TracerPolicy alerts that fire) and
//! `/api/analytics` (sliding windows 1m/5m/15m/1h per service, route and
//! side: rate, error rate, p50/p95/p99; the alert rules and what fires).
//! Responses are JSON; nothing in them comes from request contents other
//! than methods, routes and status codes (targets are reduced to routes,
//! headers are never kept).

use std::collections::BTreeMap;

use bpfleet_httptrace::alerts::Signal;
use bpfleet_httptrace::stats::{Window, summarize};
use bpfleet_proto::v1 as pb;
use serde::Serialize;

use super::Hub;
use super::record::Side;
use crate::alerts::Firing;

#[derive(Debug, Serialize)]
pub struct Health {
    /// The process answers.
    pub live: bool,
    /// The agent has no problems and every tracer program is being read.
    pub ready: bool,
    pub agent: AgentHealth,
    pub tracer: TracerHealth,
    /// The programs' TracerPolicy alerts that fire now (programs with none
    /// firing are left out). Firing alerts do not make the agent unready.
    pub alerts: Vec<ProgramAlerts>,
}

#[derive(Debug, Serialize)]
pub struct ProgramAlerts {
    pub program: String,
    pub firing: Vec<FiringAlertView>,
}

#[derive(Debug, Serialize)]
pub struct FiringAlertView {
    pub alertname: String,
    pub policy: String,
    pub severity: &'static str,
    pub signal: &'static str,
    /// The signal's value at the last evaluation.
    pub value: f64,
    pub threshold: f64,
    pub window: String,
    /// Unix seconds when it started firing.
    pub since_unix: u64,
    /// HTTP signals: the series that fires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub side: Option<String>,
}

impl FiringAlertView {
    fn of(f: &Firing) -> Self {
        let b = &f.breach;
        let http = b.rule.signal.is_http();
        Self {
            alertname: b.rule.name.clone(),
            policy: b.rule.policy.clone(),
            severity: b.rule.severity.as_str(),
            signal: b.rule.signal.as_str(),
            value: b.value,
            threshold: b.rule.threshold,
            window: b.rule.window.clone(),
            since_unix: f.since_unix,
            service: http.then(|| b.series.0.clone()),
            route: http.then(|| b.series.1.clone()),
            side: http.then(|| b.series.2.clone()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AgentHealth {
    pub ok: bool,
    pub version: String,
    pub pin_root: String,
    pub programs: u32,
    pub revisions: u32,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TracerHealth {
    pub enabled: bool,
    /// Redaction and route rules: 0 as started, +1 per reload of the
    /// TracerPolicy file (`--http-rules`) and per change of a program's
    /// rules from its TracerPolicy (UpdateConfig).
    pub rules_generation: u64,
    /// Why the policy file's last change was refused (the rules before it
    /// stay in force).
    pub rules_error: Option<String>,
    pub programs: Vec<TracerProgramHealth>,
}

#[derive(Debug, Serialize)]
pub struct TracerProgramHealth {
    pub program: String,
    pub active_revision: Option<String>,
    pub reader_running: bool,
    pub error: Option<String>,
    pub events: u64,
    pub events_lost: u64,
    pub malformed_events: u64,
    pub parse_errors: u64,
    pub connections: u64,
    pub connections_evicted: u64,
    pub exchanges: u64,
    /// Of `exchanges`, those the kernel counted (metrics mode); the rest
    /// were rebuilt from events.
    pub exchanges_counted_in_kernel: u64,
    pub own_exchanges_dropped: u64,
    /// Exchanges outside the program's namespace filter, dropped.
    pub namespace_exchanges_dropped: u64,
    pub seconds_since_last_exchange: Option<f64>,
    /// Whose redaction and route rules apply: `policy` (the program's
    /// TracerPolicy, from the operator) or `node` (the command line and
    /// the `--http-rules` file, which wins when given).
    pub rules: &'static str,
}

/// Health of the agent (`agent`), of the tracer runtime, and the policy
/// alerts firing (`firing`, by program).
pub fn health(
    agent: pb::HealthResponse,
    hub: Option<&Hub>,
    firing: BTreeMap<String, Vec<Firing>>,
) -> Health {
    let mut programs = Vec::new();
    if let Some(hub) = hub {
        let st = hub.lock();
        for (p, info) in &st.programs {
            let r = st.readers.get(p).cloned().unwrap_or_default();
            programs.push(TracerProgramHealth {
                program: p.clone(),
                active_revision: info
                    .revisions
                    .iter()
                    .find(|(_, t)| **t == info.active_token && info.active_token != 0)
                    .map(|(n, _)| n.clone()),
                reader_running: r.running,
                error: r.error,
                events: r.events,
                events_lost: r.lost,
                malformed_events: r.malformed,
                parse_errors: r.parse_errors,
                connections: r.connections,
                connections_evicted: r.evicted,
                exchanges: r.exchanges,
                exchanges_counted_in_kernel: r.counted,
                own_exchanges_dropped: r.own_dropped,
                namespace_exchanges_dropped: r.namespace_dropped,
                seconds_since_last_exchange: r.last_exchange.map(|t| t.elapsed().as_secs_f64()),
                rules: if info.rules.is_some() {
                    "policy"
                } else {
                    "node"
                },
            });
        }
    }
    let ready = agent.ok && programs.iter().all(|p| p.reader_running);
    Health {
        live: true,
        ready,
        agent: AgentHealth {
            ok: agent.ok,
            version: agent.version,
            pin_root: agent.pin_root,
            programs: agent.programs,
            revisions: agent.revisions,
            problems: agent.problems,
        },
        tracer: TracerHealth {
            enabled: hub.is_some(),
            rules_generation: hub.map_or(0, Hub::rules_generation),
            rules_error: hub.and_then(Hub::rules_error),
            programs,
        },
        alerts: firing
            .into_iter()
            .filter(|(_, f)| !f.is_empty())
            .map(|(program, f)| ProgramAlerts {
                program,
                firing: f.iter().map(FiringAlertView::of).collect(),
            })
            .collect(),
    }
}

#[derive(Debug, Serialize)]
pub struct Analytics {
    pub windows: Vec<&'static str>,
    pub series: Vec<Series>,
    pub rules: Vec<RuleView>,
    pub firing: Vec<FiringView>,
}

#[derive(Debug, Serialize)]
pub struct Series {
    pub service: String,
    pub route: String,
    pub side: Side,
    /// Window label -> figures.
    pub windows: BTreeMap<&'static str, WindowFigures>,
}

#[derive(Debug, Serialize)]
pub struct WindowFigures {
    pub requests: u64,
    pub rate_per_second: f64,
    /// Semantic conventions: server 5xx and no answer; client also 4xx.
    pub error_rate: f64,
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct RuleView {
    pub name: String,
    pub signal: &'static str,
    pub threshold: f64,
    pub window: &'static str,
    pub min_requests: u64,
}

#[derive(Debug, Serialize)]
pub struct FiringView {
    pub rule: String,
    pub service: String,
    pub route: String,
    pub side: Side,
    pub value: f64,
    pub firing_for_seconds: f64,
}

fn secs(ns: Option<u64>) -> Option<f64> {
    ns.map(|n| n as f64 / 1e9)
}

/// Every series over every window, ending at `now_ns` (kernel monotonic).
pub fn analytics(hub: &Hub, now_ns: u64) -> Analytics {
    let st = hub.lock();
    let mut series = Vec::new();
    for key in st.windows.keys() {
        let mut windows = BTreeMap::new();
        for w in Window::ALL {
            let s = summarize(w, &st.windows.merged(key, w, now_ns));
            windows.insert(
                w.label(),
                WindowFigures {
                    requests: s.requests,
                    rate_per_second: s.rate_per_second,
                    error_rate: s.error_rate,
                    p50_seconds: secs(s.p50_ns),
                    p95_seconds: secs(s.p95_ns),
                    p99_seconds: secs(s.p99_ns),
                },
            );
        }
        series.push(Series {
            service: key.service.clone(),
            route: key.route.clone(),
            side: key.side,
            windows,
        });
    }
    let rules = hub
        .config()
        .rules
        .iter()
        .map(|r| RuleView {
            name: r.name.clone(),
            signal: match r.signal {
                Signal::ErrorRate => "error_rate",
                Signal::P99Latency => "p99",
            },
            threshold: r.threshold,
            window: r.window.label(),
            min_requests: r.min_requests,
        })
        .collect();
    let firing = st
        .firing
        .iter()
        .map(|((rule, key), f)| FiringView {
            rule: rule.clone(),
            service: key.service.clone(),
            route: key.route.clone(),
            side: key.side,
            value: f.value,
            firing_for_seconds: f.since.elapsed().as_secs_f64(),
        })
        .collect();
    Analytics {
        windows: Window::ALL.iter().map(|w| w.label()).collect(),
        series,
        rules,
        firing,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::HttpConfig;
    use crate::http::record::Record;
    use bpfleet_httptrace::Outcome;

    #[test]
    fn analytics_per_series_and_window() {
        let hub = Hub::new(HttpConfig::default()).unwrap();
        const S: u64 = 1_000_000_000;
        let now = 10_000 * S;
        let mut recs = Vec::new();
        for i in 0..100u64 {
            recs.push(Record {
                token: 1,
                side: Side::Server,
                method: "GET",
                status: Some(if i < 10 { 500 } else { 200 }),
                route: "/a".into(),
                service: "svc".into(),
                namespace: String::new(),
                pod: String::new(),
                deployment: String::new(),
                command_line: "".into(),
                duration_ns: (i + 1) * 1_000_000,
                // 100 exchanges over the last 100 s: all in 5m, some in 1m.
                end_ns: now - (100 - i) * S,
                target: "/a".into(),
                local_port: 80,
                remote_port: 40000,
                request_body_bytes: None,
                response_body_bytes: None,
                outcome: Outcome::Complete,
            });
        }
        hub.apply("t", &recs);
        let a = analytics(&hub, now);
        assert_eq!(a.windows, ["1m", "5m", "15m", "1h"]);
        assert_eq!(a.series.len(), 1);
        let w5 = &a.series[0].windows["5m"];
        assert_eq!(w5.requests, 100);
        assert!((w5.error_rate - 0.1).abs() < 1e-9);
        let p99 = w5.p99_seconds.unwrap();
        assert!((p99 - 0.099).abs() / 0.099 < 0.07, "{p99}");
        assert!(a.series[0].windows["1m"].requests < 100);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["series"][0]["side"], "server");
        assert_eq!(json["rules"][0]["name"], "HttpHighErrorRate");
    }
}
