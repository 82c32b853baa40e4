//! What a TracerPolicy's `spec.config` becomes on a node: writes into the
//! program's `bpfleet_config` slots 8-15 and its `bpfleet_pids` and
//! `bpfleet_ports` maps, the contract of `bpf/include/bpfleet_gate.h`; and
//! what the agent itself holds for the program (the namespace filter, the
//! HTTP tracer's redaction and route rules, the CPU budget of
//! `spec.budgets`, the policy's alert rules).
//!
//! Pure: the agent requests are plain data. The last write is the stamp
//! (slot 15), a digest of everything written before it; agents report the
//! slot in `List`, so the reconciler sees which nodes hold which
//! configuration and writes again only where the stamp differs: after a
//! policy change, to a node that joined or whose agent missed a write, and
//! to the nodes of a program whose policy went away (back to stamp 0, the
//! program's defaults).

use bpfleet_api::policy::{
    AlertRule, AlertSignal, AlertWindow, ExchangeEvents, RuntimeConfig, Severity, TracedEnds,
    UnmatchedRoutes,
};
use bpfleet_proto::v1 as pb;
use sha2::{Digest, Sha256};

/// Slots of `bpfleet_config` (see `bpfleet_gate.h`).
pub const SLOT_SAMPLE_PPM: u32 = 8;
pub const SLOT_PAYLOAD_BYTES: u32 = 9;
pub const SLOT_PID_FILTER: u32 = 10;
pub const SLOT_PORT_FILTER: u32 = 11;
pub const SLOT_ENDS: u32 = 12;
pub const SLOT_EVENTS: u32 = 13;
pub const SLOT_STAMP: u32 = 15;
pub const PIDS_MAP: &str = "bpfleet_pids";
pub const PORTS_MAP: &str = "bpfleet_ports";
/// `bpfleet_ports` values and `BPFLEET_CFG_PORT_FILTER` bits.
pub const PORT_TRACE: u8 = 1;
pub const PORT_SKIP: u8 = 2;
pub const PORTS_ONLY: u64 = 1;
pub const PORTS_SKIP: u64 = 2;
/// `BPFLEET_CFG_ENDS` bits.
pub const ENDS_SERVER: u64 = 1;
pub const ENDS_CLIENT: u64 = 2;

/// The writes that put one configuration in force on a node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeConfig {
    /// Slots 8-13, in slot order.
    pub slots: [(u32, u64); 6],
    /// Processes traced (empty: no process filter, map not written).
    pub pids: Vec<u32>,
    /// Ports and their mark (empty: no port filter, map not written).
    pub ports: Vec<(u16, u8)>,
    /// Kubernetes namespaces whose exchanges the agent keeps (empty: all);
    /// sent with the slots, held by the agent (userspace, not a map).
    pub namespaces: Vec<String>,
    /// The HTTP tracer's redaction and route rules (`spec.config.redaction`
    /// and `spec.config.routes`); sent with the slots, held by the agent.
    /// Empty: the agent's own.
    pub tracer_rules: pb::TracerRules,
    /// The policy's CPU budget (`spec.budgets.maxCpuOverheadPercent`,
    /// `reduceSamplingOnBreach`); sent with the slots, held and enforced
    /// by the agent. `max_cpu_percent` 0: none.
    pub cpu_budget: pb::CpuBudget,
    /// The policy's alert rules (`spec.alerts`); sent with the slots,
    /// evaluated by the agent. Empty: none.
    pub alerts: Vec<pb::PolicyAlert>,
    /// Digest of the above; 0 only for the defaults.
    pub stamp: u64,
}

impl NodeConfig {
    /// No policy: every slot 0, the program's defaults. The maps are left
    /// as they are; with their filter bits 0 programs do not look at them.
    pub fn defaults() -> Self {
        Self {
            slots: [
                (SLOT_SAMPLE_PPM, 0),
                (SLOT_PAYLOAD_BYTES, 0),
                (SLOT_PID_FILTER, 0),
                (SLOT_PORT_FILTER, 0),
                (SLOT_ENDS, 0),
                (SLOT_EVENTS, 0),
            ],
            pids: Vec::new(),
            ports: Vec::new(),
            namespaces: Vec::new(),
            tracer_rules: pb::TracerRules::default(),
            cpu_budget: pb::CpuBudget::default(),
            alerts: Vec::new(),
            stamp: 0,
        }
    }

    /// This configuration with a CPU budget: `max_cpu_percent` (0 or
    /// unset: none) for the policy `policy`. The stamp follows.
    pub fn with_cpu_budget(
        mut self,
        max_cpu_percent: Option<f64>,
        reduce: bool,
        policy: &str,
    ) -> Self {
        let max = max_cpu_percent
            .filter(|m| m.is_finite() && *m > 0.0)
            .map_or(0.0, |m| m.min(100.0));
        self.cpu_budget = if max > 0.0 {
            pb::CpuBudget {
                max_cpu_percent: max,
                reduce_sampling: reduce,
                policy: policy.to_string(),
            }
        } else {
            pb::CpuBudget::default()
        };
        self.stamp = self.digest();
        self
    }

    /// This configuration with the alert rules of policy `policy`.
    pub fn with_alerts(mut self, policy: &str, alerts: &[AlertRule]) -> Self {
        self.alerts = alerts
            .iter()
            .map(|a| pb::PolicyAlert {
                name: a.name.clone(),
                signal: match a.signal {
                    AlertSignal::ErrorRate => "ErrorRate",
                    AlertSignal::P99Latency => "P99Latency",
                    AlertSignal::CpuOverheadPercent => "CpuOverheadPercent",
                    AlertSignal::EventsLost => "EventsLost",
                    AlertSignal::ProgramErrors => "ProgramErrors",
                }
                .into(),
                threshold: a.threshold,
                window: match a.window {
                    AlertWindow::OneMinute => "1m",
                    AlertWindow::FiveMinutes => "5m",
                    AlertWindow::FifteenMinutes => "15m",
                    AlertWindow::OneHour => "1h",
                }
                .into(),
                severity: match a.severity {
                    Severity::Warning => "Warning",
                    Severity::Critical => "Critical",
                }
                .into(),
                policy: policy.to_string(),
                // 0: the agent's default (20).
                min_requests: a.min_requests.unwrap_or(0),
            })
            .collect();
        self.stamp = self.digest();
        self
    }

    /// The configuration of a policy's `spec.config`. The schema bounds
    /// every value already; out-of-range ones (an old object, a client that
    /// skipped validation) are clamped to the nearest the program takes.
    pub fn of(cfg: &RuntimeConfig) -> Self {
        // Unset is 0, the program's default; 1.0 is written as a million
        // (all), which for most programs is the same as 0 but not for the
        // HTTP tracer's metrics mode, where 0 sends no connection as events.
        let ppm = cfg
            .sampling_rate
            .filter(|r| r.is_finite())
            .map_or(0, |r| (r * 1e6).round().clamp(1.0, 1_000_000.0) as u64);
        let ends = match cfg.ends {
            None => 0,
            Some(TracedEnds::Server) => ENDS_SERVER,
            Some(TracedEnds::Client) => ENDS_CLIENT,
            Some(TracedEnds::Both) => ENDS_SERVER | ENDS_CLIENT,
        };
        let events = u64::from(cfg.exchange_events == Some(ExchangeEvents::All));
        let payload = cfg
            .payload_bytes
            .map_or(0, |b| u64::try_from(b.clamp(1, 4096)).unwrap_or(0));
        let mut pids: Vec<u32> = cfg
            .filters
            .pids
            .iter()
            .filter_map(|p| u32::try_from(*p).ok().filter(|p| *p > 0))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        let port = |p: &i32| u16::try_from(*p).ok().filter(|p| *p > 0);
        let skip: Vec<u16> = cfg.filters.exclude_ports.iter().filter_map(port).collect();
        // A port both listed and excluded is excluded.
        let mut ports: Vec<(u16, u8)> = cfg
            .filters
            .ports
            .iter()
            .filter_map(port)
            .filter(|p| !skip.contains(p))
            .map(|p| (p, PORT_TRACE))
            .chain(skip.iter().map(|p| (*p, PORT_SKIP)))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        let mut mode = 0;
        if !cfg.filters.ports.is_empty() {
            mode |= PORTS_ONLY;
        }
        if !skip.is_empty() {
            mode |= PORTS_SKIP;
        }
        let slots = [
            (SLOT_SAMPLE_PPM, ppm),
            (SLOT_PAYLOAD_BYTES, payload),
            (SLOT_PID_FILTER, u64::from(!pids.is_empty())),
            (SLOT_PORT_FILTER, mode),
            (SLOT_ENDS, ends),
            (SLOT_EVENTS, events),
        ];
        let mut namespaces = cfg.filters.namespaces.clone();
        namespaces.sort();
        namespaces.dedup();
        let tracer_rules = pb::TracerRules {
            redact_headers: cfg.redaction.headers.clone(),
            redact_query_params: cfg.redaction.query_params.clone(),
            redact_command_line_patterns: cfg.redaction.command_line_patterns.clone(),
            disable_default_redaction: cfg.redaction.disable_defaults,
            route_patterns: cfg.routes.patterns.clone(),
            unmatched_routes: match cfg.routes.unmatched {
                // The default: the agent's own `--http-unmatched`.
                UnmatchedRoutes::Heuristic => String::new(),
                UnmatchedRoutes::Wildcard => "Wildcard".into(),
            },
            max_routes: cfg
                .routes
                .max_routes
                .and_then(|m| u32::try_from(m).ok())
                .unwrap_or(0),
        };
        let mut out = Self {
            slots,
            pids,
            ports,
            namespaces,
            tracer_rules,
            cpu_budget: pb::CpuBudget::default(),
            alerts: Vec::new(),
            stamp: 0,
        };
        out.stamp = out.digest();
        out
    }

    /// SHA-256 of the writes, first 8 bytes; never 0 (0 is "defaults").
    fn digest(&self) -> u64 {
        let mut h = Sha256::new();
        for (slot, v) in self.slots {
            h.update(slot.to_le_bytes());
            h.update(v.to_le_bytes());
        }
        h.update(b"pids");
        for p in &self.pids {
            h.update(p.to_le_bytes());
        }
        h.update(b"ports");
        for (p, mark) in &self.ports {
            h.update(p.to_le_bytes());
            h.update([*mark]);
        }
        h.update(b"namespaces");
        for n in &self.namespaces {
            h.update(n.as_bytes());
            h.update([0]);
        }
        // Lists and strings with their lengths, so that no two rule sets
        // hash alike by moving text between fields.
        let r = &self.tracer_rules;
        h.update(b"tracer_rules");
        for (name, list) in [
            ("headers", &r.redact_headers),
            ("query", &r.redact_query_params),
            ("cmdline", &r.redact_command_line_patterns),
            ("routes", &r.route_patterns),
        ] {
            h.update(name.as_bytes());
            h.update((list.len() as u64).to_le_bytes());
            for v in list {
                h.update((v.len() as u64).to_le_bytes());
                h.update(v.as_bytes());
            }
        }
        h.update([u8::from(r.disable_default_redaction)]);
        h.update((r.unmatched_routes.len() as u64).to_le_bytes());
        h.update(r.unmatched_routes.as_bytes());
        h.update(r.max_routes.to_le_bytes());
        // Only when set, so that stamps without a budget stay as they were.
        let b = &self.cpu_budget;
        if b.max_cpu_percent > 0.0 {
            h.update(b"cpu_budget");
            h.update(b.max_cpu_percent.to_le_bytes());
            h.update([u8::from(b.reduce_sampling)]);
            h.update((b.policy.len() as u64).to_le_bytes());
            h.update(b.policy.as_bytes());
        }
        h.update(b"alerts");
        h.update((self.alerts.len() as u64).to_le_bytes());
        for a in &self.alerts {
            for v in [&a.name, &a.signal, &a.window, &a.severity, &a.policy] {
                h.update((v.len() as u64).to_le_bytes());
                h.update(v.as_bytes());
            }
            h.update(a.threshold.to_le_bytes());
            h.update(a.min_requests.to_le_bytes());
        }
        let d = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        u64::from_le_bytes(first).max(1)
    }

    /// The agent calls, in order: the lists (each made to hold exactly its
    /// entries), then the slots, the stamp last, so a node that stopped
    /// half-way still shows the old stamp and is written again.
    pub fn requests(&self, program: &str) -> Vec<pb::UpdateConfigRequest> {
        let mut out = Vec::new();
        if !self.pids.is_empty() {
            out.push(pb::UpdateConfigRequest {
                program: program.to_string(),
                map: PIDS_MAP.to_string(),
                entries: self
                    .pids
                    .iter()
                    .map(|p| pb::ConfigEntry {
                        key: p.to_ne_bytes().to_vec(),
                        value: vec![1],
                    })
                    .collect(),
                replace: true,
                namespaces: None,
                tracer_rules: None,
                cpu_budget: None,
                alerts: None,
            });
        }
        if !self.ports.is_empty() {
            out.push(pb::UpdateConfigRequest {
                program: program.to_string(),
                map: PORTS_MAP.to_string(),
                entries: self
                    .ports
                    .iter()
                    .map(|(p, mark)| pb::ConfigEntry {
                        key: p.to_ne_bytes().to_vec(),
                        value: vec![*mark],
                    })
                    .collect(),
                replace: true,
                namespaces: None,
                tracer_rules: None,
                cpu_budget: None,
                alerts: None,
            });
        }
        let slot = |k: u32, v: u64| pb::ConfigEntry {
            key: k.to_ne_bytes().to_vec(),
            value: v.to_ne_bytes().to_vec(),
        };
        let config =
            |entries, namespaces, tracer_rules, cpu_budget, alerts| pb::UpdateConfigRequest {
                program: program.to_string(),
                map: String::new(),
                entries,
                replace: false,
                namespaces,
                tracer_rules,
                cpu_budget,
                alerts,
            };
        // The namespace filter, the tracer rules, the CPU budget and the
        // alert rules travel with the slots (an empty list lifts the
        // filter, empty rules put the agent's own back, a budget of 0
        // removes it, no alerts remove the program's), so they are in force
        // before the stamp says so. The agent takes slot 8 as the requested
        // sampling and the budget after it.
        out.push(config(
            self.slots.iter().map(|&(k, v)| slot(k, v)).collect(),
            Some(pb::NamespaceFilter {
                names: self.namespaces.clone(),
            }),
            Some(self.tracer_rules.clone()),
            Some(self.cpu_budget.clone()),
            Some(pb::AlertRules {
                rules: self.alerts.clone(),
            }),
        ));
        out.push(config(
            vec![slot(SLOT_STAMP, self.stamp)],
            None,
            None,
            None,
            None,
        ));
        out
    }
}

/// The stamp an agent reports for a program (`ProgramInfo.config`): 0 when
/// the program has no config map or a short one.
pub fn reported_stamp(config: &[u64]) -> u64 {
    config.get(SLOT_STAMP as usize).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpfleet_api::policy::Filters;

    fn cfg(json: serde_json::Value) -> RuntimeConfig {
        serde_json::from_value(json).expect("runtime config")
    }

    #[test]
    fn defaults_write_zeros_and_stamp_zero() {
        let d = NodeConfig::defaults();
        assert_eq!(d.stamp, 0);
        assert!(d.slots.iter().all(|(_, v)| *v == 0));
        let reqs = d.requests("p");
        assert_eq!(reqs.len(), 2, "slots, then stamp; no map writes");
        assert_eq!(reqs[1].entries[0].value, 0u64.to_ne_bytes().to_vec());
        // An empty policy config is not the defaults' stamp: a node with
        // no policy and one with an empty policy are told apart, but both
        // write the same slots.
        let e = NodeConfig::of(&RuntimeConfig::default());
        assert_eq!(e.slots, d.slots);
        assert_ne!(e.stamp, 0);
    }

    #[test]
    fn sampling_payload_and_filters_map_onto_the_contract() {
        let c = NodeConfig::of(&cfg(serde_json::json!({
            "samplingRate": 0.25,
            "payloadBytes": 512,
            "filters": {"pids": [42, 7, 42], "ports": [8080, 80, 9090], "excludePorts": [9090, 22]}
        })));
        assert_eq!(
            c.slots,
            [
                (SLOT_SAMPLE_PPM, 250_000),
                (SLOT_PAYLOAD_BYTES, 512),
                (SLOT_PID_FILTER, 1),
                (SLOT_PORT_FILTER, PORTS_ONLY | PORTS_SKIP),
                (SLOT_ENDS, 0),
                (SLOT_EVENTS, 0),
            ]
        );
        assert_eq!(c.pids, vec![7, 42]);
        assert_eq!(
            c.ports,
            vec![
                (22, PORT_SKIP),
                (80, PORT_TRACE),
                (8080, PORT_TRACE),
                (9090, PORT_SKIP)
            ],
            "an excluded port is never also traced"
        );
        let reqs = c.requests("tracer");
        let maps: Vec<&str> = reqs.iter().map(|r| r.map.as_str()).collect();
        assert_eq!(maps, [PIDS_MAP, PORTS_MAP, "", ""]);
        assert!(reqs[0].replace && reqs[1].replace && !reqs[2].replace);
        assert_eq!(reqs[3].entries.len(), 1, "the stamp goes alone, last");
        assert_eq!(reqs[3].entries[0].key, SLOT_STAMP.to_ne_bytes().to_vec());
        assert_eq!(reqs[3].entries[0].value, c.stamp.to_ne_bytes().to_vec());
    }

    #[test]
    fn only_exclusions_skip_without_restricting() {
        let c = NodeConfig::of(&RuntimeConfig {
            filters: Filters {
                exclude_ports: vec![22],
                ..Default::default()
            },
            ..Default::default()
        });
        assert_eq!(c.slots[3], (SLOT_PORT_FILTER, PORTS_SKIP));
    }

    #[test]
    fn ends_and_exchange_events_map_onto_their_slots() {
        let c = NodeConfig::of(&cfg(
            serde_json::json!({"ends": "Both", "exchangeEvents": "All"}),
        ));
        assert_eq!(c.slots[4], (SLOT_ENDS, ENDS_SERVER | ENDS_CLIENT));
        assert_eq!(c.slots[5], (SLOT_EVENTS, 1));
        let c = NodeConfig::of(&cfg(
            serde_json::json!({"ends": "Client", "exchangeEvents": "Sampled"}),
        ));
        assert_eq!(c.slots[4], (SLOT_ENDS, ENDS_CLIENT));
        assert_eq!(c.slots[5], (SLOT_EVENTS, 0));
        let s = NodeConfig::of(&cfg(serde_json::json!({"ends": "Server"})));
        assert_eq!(s.slots[4], (SLOT_ENDS, ENDS_SERVER));
        assert_ne!(s.stamp, c.stamp);
        assert!(
            serde_json::from_value::<RuntimeConfig>(serde_json::json!({"ends": "Nowhere"}))
                .is_err()
        );
    }

    #[test]
    fn full_sampling_is_written_as_a_million_and_tiny_rates_keep_something() {
        let all = NodeConfig::of(&cfg(serde_json::json!({"samplingRate": 1.0})));
        assert_eq!(all.slots[0], (SLOT_SAMPLE_PPM, 1_000_000));
        let unset = NodeConfig::of(&cfg(serde_json::json!({})));
        assert_eq!(unset.slots[0], (SLOT_SAMPLE_PPM, 0));
        let tiny = NodeConfig::of(&cfg(serde_json::json!({"samplingRate": 0.0000001})));
        assert_eq!(tiny.slots[0], (SLOT_SAMPLE_PPM, 1));
    }

    #[test]
    fn stamp_follows_content_only() {
        let a = NodeConfig::of(&cfg(serde_json::json!({"filters": {"ports": [80, 8080]}})));
        let b = NodeConfig::of(&cfg(
            serde_json::json!({"filters": {"ports": [8080, 80, 80]}}),
        ));
        let c = NodeConfig::of(&cfg(serde_json::json!({"filters": {"ports": [80]}})));
        assert_eq!(a.stamp, b.stamp, "order and repeats do not matter");
        assert_ne!(a.stamp, c.stamp);
        // Redaction and routes are the agent's, not the kernel's, but they
        // are written too (with the slots), so they change the stamp.
        let d = NodeConfig::of(&cfg(serde_json::json!({
            "filters": {"ports": [80, 8080]},
            "redaction": {"headers": ["X-Api-Key"]}
        })));
        assert_ne!(a.stamp, d.stamp);
        assert_eq!(a.slots, d.slots);
    }

    #[test]
    fn namespaces_go_with_the_slots_and_into_the_stamp() {
        let c = NodeConfig::of(&cfg(
            serde_json::json!({"filters": {"namespaces": ["shop", "pay", "shop"]}}),
        ));
        assert_eq!(c.namespaces, ["pay", "shop"]);
        let reqs = c.requests("p");
        assert_eq!(
            reqs[0].namespaces.as_ref().map(|n| n.names.clone()),
            Some(vec!["pay".to_string(), "shop".to_string()])
        );
        assert!(reqs[1].namespaces.is_none(), "the stamp goes alone");
        let none = NodeConfig::of(&RuntimeConfig::default());
        assert_ne!(c.stamp, none.stamp);
        assert_eq!(
            none.requests("p")[0].namespaces,
            Some(pb::NamespaceFilter::default()),
            "no namespaces: the filter is lifted"
        );
    }

    #[test]
    fn reported_stamp_reads_slot_15() {
        let mut config = vec![0u64; 16];
        config[15] = 99;
        assert_eq!(reported_stamp(&config), 99);
        assert_eq!(reported_stamp(&[]), 0);
    }

    /// The policy's redaction and routes travel with the slots, before the
    /// stamp, and every change of them changes the stamp.
    #[test]
    fn redaction_and_routes_go_with_the_slots_and_change_the_stamp() {
        let base = cfg(serde_json::json!({
            "redaction": {"headers": ["X-Session"], "queryParams": ["sid"],
                          "commandLinePatterns": ["(--key )\\S+"], "disableDefaults": true},
            "routes": {"patterns": ["/items/{item}"], "unmatched": "Wildcard", "maxRoutes": 50}
        }));
        let c = NodeConfig::of(&base);
        let reqs = c.requests("p");
        let slots = &reqs[reqs.len() - 2];
        let rules = slots.tracer_rules.as_ref().expect("rules with the slots");
        assert_eq!(rules.redact_headers, ["X-Session"]);
        assert_eq!(rules.redact_query_params, ["sid"]);
        assert_eq!(rules.redact_command_line_patterns, ["(--key )\\S+"]);
        assert!(rules.disable_default_redaction);
        assert_eq!(rules.route_patterns, ["/items/{item}"]);
        assert_eq!(
            (rules.unmatched_routes.as_str(), rules.max_routes),
            ("Wildcard", 50)
        );
        assert!(reqs.last().expect("stamp").tracer_rules.is_none());
        // No policy: empty rules, the agent's own come back.
        let d = NodeConfig::defaults().requests("p");
        assert_eq!(d[0].tracer_rules, Some(pb::TracerRules::default()));

        let mut stamps = vec![c.stamp, NodeConfig::of(&RuntimeConfig::default()).stamp];
        let changes: [fn(&mut RuntimeConfig); 7] = [
            |c| c.redaction.headers.push("X-Other".into()),
            |c| c.redaction.query_params.clear(),
            |c| c.redaction.command_line_patterns[0].push('x'),
            |c| c.redaction.disable_defaults = false,
            |c| c.routes.patterns.push("/more".into()),
            |c| c.routes.unmatched = bpfleet_api::policy::UnmatchedRoutes::Heuristic,
            |c| c.routes.max_routes = Some(51),
        ];
        for change in changes {
            let mut v = base.clone();
            change(&mut v);
            stamps.push(NodeConfig::of(&v).stamp);
        }
        // Text moved from one list to the next is another rule set.
        let mut moved = base.clone();
        moved.redaction.query_params = vec!["X-Session".into(), "sid".into()];
        moved.redaction.headers.clear();
        stamps.push(NodeConfig::of(&moved).stamp);
        let distinct: std::collections::BTreeSet<u64> = stamps.iter().copied().collect();
        assert_eq!(distinct.len(), stamps.len(), "{stamps:?}");
    }

    /// A policy's alerts go with the slots, named by the policy, and are
    /// part of the stamp: a changed threshold is written again; no alerts
    /// travel as an empty set, which removes the program's.
    #[test]
    fn alerts_go_with_the_slots_and_change_the_stamp() {
        let rule = |threshold: f64| -> AlertRule {
            serde_json::from_value(serde_json::json!({
                "name": "Faults", "signal": "ProgramErrors", "threshold": threshold,
                "window": "1m", "severity": "Critical"
            }))
            .expect("rule")
        };
        let errors = |min: Option<u64>| -> AlertRule {
            let mut r: AlertRule = serde_json::from_value(serde_json::json!({
                "name": "Errors", "signal": "ErrorRate", "threshold": 0.05
            }))
            .expect("rule");
            r.min_requests = min;
            r
        };
        let base = NodeConfig::of(&RuntimeConfig::default());
        let c = base.clone().with_alerts("pol", &[rule(0.0)]);
        let reqs = c.requests("p");
        let sent = reqs[0].alerts.as_ref().expect("alerts with the slots");
        assert_eq!(
            sent.rules,
            [pb::PolicyAlert {
                name: "Faults".into(),
                signal: "ProgramErrors".into(),
                threshold: 0.0,
                window: "1m".into(),
                severity: "Critical".into(),
                policy: "pol".into(),
                min_requests: 0,
            }]
        );
        assert!(reqs.last().expect("stamp").alerts.is_none());
        let stamps = [
            base.stamp,
            c.stamp,
            base.clone().with_alerts("pol", &[rule(1.0)]).stamp,
            base.clone().with_alerts("other", &[rule(0.0)]).stamp,
            base.clone().with_alerts("pol", &[errors(None)]).stamp,
            base.clone().with_alerts("pol", &[errors(Some(100))]).stamp,
        ];
        let distinct: std::collections::BTreeSet<u64> = stamps.iter().copied().collect();
        assert_eq!(distinct.len(), stamps.len(), "{stamps:?}");
        assert_eq!(base.clone().with_alerts("pol", &[]).stamp, base.stamp);
        // minRequests travels as given; unset, as 0 (the agent's 20).
        let sent = |min| {
            base.clone()
                .with_alerts("pol", &[errors(min)])
                .requests("p")[0]
                .alerts
                .clone()
                .expect("alerts")
                .rules[0]
                .min_requests
        };
        assert_eq!((sent(None), sent(Some(100))), (0, 100));
        let d = NodeConfig::defaults().requests("p");
        assert_eq!(d[0].alerts, Some(pb::AlertRules::default()));
    }
}
