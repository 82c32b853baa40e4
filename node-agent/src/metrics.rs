//! Prometheus endpoint: kernel figures read at scrape time
//! (`bpfleet_program_runs_total`, `bpfleet_program_run_seconds_total`,
//! `bpfleet_program_errors_total`, `bpfleet_map_memory_bytes`, labelled by
//! program and revision) and the agent's own operation counters
//! (`bpfleet_agent_operations_total` by op and result), the BPF log's
//! (`bpfleet_bpf_log_records_total` by program, revision and level, counted
//! by the reader; `bpfleet_bpf_log_dropped_total` by program, revision and
//! reason: `rate_limited` and `ring_full` read from each revision's
//! `bpfleet_log_drops` at scrape time, `malformed` counted by the reader),
//! the CPU budgets' (`bpfleet_agent_program_cpu_percent`,
//! `bpfleet_agent_sampling_ppm` by program,
//! `bpfleet_agent_budget_enforcements_total` by program and action),
//! plus the HTTP tracer's families when the tracer runtime is on
//! ([`crate::http::export`]).
//!
//! `bpfleet_agent_policy_alert_firing` (1/0 per TracerPolicy alert rule of
//! a program: program, policy, alertname, severity) and
//! `bpfleet_agent_policy_alert_transitions` ([`crate::alerts`]).
//!
//! The same listener serves the agent's HTTP API: `/api/health` and
//! `/api/analytics` ([`crate::http::api`]); any other path is 404.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::agent::Agent;
use crate::bpflog::{LogCounters, UNKNOWN};
use crate::http::{Hub, api, mono_ns};

type Labels = Vec<(String, String)>;

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ops: Family<Labels, Counter>,
    agent: Arc<Mutex<Agent>>,
    hub: Option<Arc<Hub>>,
    bpf_log: Arc<LogCounters>,
    board: Arc<crate::alerts::Board>,
}

/// The BPF log's series: `bpfleet_bpf_log_records_total` (records printed,
/// counted by the reader), with every level of every revision that logs
/// present from its load at 0, so that a rate over it is 0 and not "no
/// data" before the first record; and `bpfleet_bpf_log_dropped_total`: the
/// kernel's drops of every revision that logs, read at scrape time, and the
/// records the reader could not decode.
#[derive(Debug)]
struct LogCollector {
    agent: Arc<Mutex<Agent>>,
    log: Arc<LogCounters>,
}

impl Collector for LogCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let drops = match self.agent.lock() {
            Ok(a) => a.log_drops(),
            Err(_) => Vec::new(),
        };
        for (p, r, _, _) in &drops {
            for level in crate::bpflog::LEVELS {
                drop(self.log.records.get_or_create(&vec![
                    ("program".into(), p.clone()),
                    ("revision".into(), r.clone()),
                    ("level".into(), level.into()),
                ]));
            }
        }
        self.log.records.encode(encoder.encode_descriptor(
            "bpfleet_bpf_log_records",
            "BPF log records printed on stdout, by program, revision and level",
            None,
            self.log.records.metric_type(),
        )?)?;
        let mut m = encoder.encode_descriptor(
            "bpfleet_bpf_log_dropped",
            "BPF log records dropped: by the in-kernel rate limit (rate_limited), for a full ring (ring_full), or not decodable by the agent (malformed)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        let labels = |p: &str, r: &str, why: &str| -> Labels {
            vec![
                ("program".into(), p.into()),
                ("revision".into(), r.into()),
                ("reason".into(), why.into()),
            ]
        };
        for (p, r, limited, full) in &drops {
            ConstCounter::new(*limited).encode(m.encode_family(&labels(
                p,
                r,
                "rate_limited",
            ))?)?;
            ConstCounter::new(*full).encode(m.encode_family(&labels(p, r, "ring_full"))?)?;
        }
        let bad = self
            .log
            .malformed
            .load(std::sync::atomic::Ordering::Relaxed);
        if bad > 0 {
            ConstCounter::new(bad).encode(m.encode_family(&labels(
                UNKNOWN,
                UNKNOWN,
                "malformed",
            ))?)?;
        }
        Ok(())
    }
}

/// CPU budgets: `bpfleet_agent_program_cpu_percent` (every program's CPU
/// share over the last enforcement period), `bpfleet_agent_sampling_ppm`
/// (the sampling in force of programs with a budget that sample) and
/// `bpfleet_agent_budget_enforcements_total` (sampling changes by action),
/// read from the agent at scrape time.
#[derive(Debug)]
struct BudgetCollector {
    agent: Arc<Mutex<Agent>>,
}

impl Collector for BudgetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (figures, counts) = match self.agent.lock() {
            Ok(a) => (a.budget_figures(), a.enforcement_counts()),
            Err(_) => (Vec::new(), Vec::new()),
        };
        let program = |p: &str| -> Labels { vec![("program".into(), p.into())] };
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_agent_program_cpu_percent",
                "BPF run time of the program over the last CPU budget period, percent of the node's CPU time (run time / (wall time x online CPUs))",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for f in &figures {
                if let Some(pct) = f.cpu_percent {
                    ConstGauge::new(pct).encode(m.encode_family(&program(&f.program))?)?;
                }
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_agent_sampling_ppm",
                "Share of its events a program with a CPU budget keeps now, per million (slot 8 of bpfleet_config, 0 read as the program declares)",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for f in &figures {
                if let Some(ppm) = f.sampling_ppm {
                    ConstGauge::new(ppm as i64).encode(m.encode_family(&program(&f.program))?)?;
                }
            }
        }
        let mut m = encoder.encode_descriptor(
            "bpfleet_agent_budget_enforcements",
            "Changes of a program's sampling by its CPU budget: reduce (over budget) or restore (load fell)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (p, action, n) in &counts {
            let l: Labels = vec![
                ("program".into(), p.clone()),
                ("action".into(), (*action).into()),
            ];
            ConstCounter::new(*n).encode(m.encode_family(&l)?)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct KernelCollector {
    agent: Arc<Mutex<Agent>>,
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = match self.agent.lock() {
            Ok(a) => a.stats("").map(|s| s.revisions).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let labels = |r: &bpfleet_proto::v1::RevisionStats| -> Labels {
            vec![
                ("program".into(), r.program.clone()),
                ("revision".into(), r.revision.clone()),
            ]
        };
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_program_runs",
                "Runs of the revision's BPF programs (kernel run_cnt)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for r in &stats {
                let l = labels(r);
                ConstCounter::new(r.run_cnt).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_program_run_seconds",
                "Time spent in the revision's BPF programs (kernel run_time_ns)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for r in &stats {
                let l = labels(r);
                ConstCounter::new(r.run_time_ns as f64 / 1e9).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_program_errors",
                "Errors the revision's programs reported (bpfleet_errors map)",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for r in &stats {
                let l = labels(r);
                ConstCounter::new(r.program_errors).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_map_memory_bytes",
                "Kernel memory of the revision's maps (the active one also carries the shared maps)",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for r in &stats {
                let l = labels(r);
                ConstGauge::new(r.map_memory_bytes as i64).encode(m.encode_family(&l)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "bpfleet_revision_active",
                "1 for the active revision of a program, 0 for the others",
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for r in &stats {
                let l = labels(r);
                ConstGauge::new(i64::from(r.active)).encode(m.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}

/// `bpfleet_agent_policy_alert_firing`: 1 for every policy alert rule of
/// a program that fires now (on any series), 0 for the others.
#[derive(Debug)]
struct PolicyAlertCollector {
    agent: Arc<Mutex<Agent>>,
    board: Arc<crate::alerts::Board>,
}

impl Collector for PolicyAlertCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let views = match self.agent.lock() {
            Ok(a) => a.program_views(),
            Err(_) => Vec::new(),
        };
        let mut m = encoder.encode_descriptor(
            "bpfleet_agent_policy_alert_firing",
            "1 while a TracerPolicy alert of the program fires on this node (on any series), 0 otherwise",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for v in views.iter().filter(|v| !v.alerts.is_empty()) {
            let firing = self.board.firing(&v.program);
            for a in &v.alerts {
                let on = firing.iter().any(|f| f.breach.rule.name == a.name);
                let l: Labels = vec![
                    ("program".into(), v.program.clone()),
                    ("policy".into(), a.policy.clone()),
                    ("alertname".into(), a.name.clone()),
                    ("severity".into(), a.severity.as_str().into()),
                ];
                ConstGauge::new(i64::from(on)).encode(m.encode_family(&l)?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    /// Metrics over `agent`.
    pub fn new(agent: Arc<Mutex<Agent>>) -> Arc<Self> {
        Self::with_http(agent, None)
    }

    /// Metrics over `agent` and, when given, the HTTP tracer runtime.
    pub fn with_http(agent: Arc<Mutex<Agent>>, hub: Option<Arc<Hub>>) -> Arc<Self> {
        let mut registry = Registry::default();
        let ops = Family::<Labels, Counter>::default();
        registry.register(
            "bpfleet_agent_operations",
            "Agent API operations by op and result",
            ops.clone(),
        );
        registry.register_collector(Box::new(KernelCollector {
            agent: agent.clone(),
        }));
        registry.register_collector(Box::new(BudgetCollector {
            agent: agent.clone(),
        }));
        let bpf_log = Arc::new(LogCounters::default());
        registry.register_collector(Box::new(LogCollector {
            agent: agent.clone(),
            log: bpf_log.clone(),
        }));
        let board = match agent.lock() {
            Ok(a) => a.alert_board(),
            Err(p) => p.into_inner().alert_board(),
        };
        registry.register(
            "bpfleet_agent_policy_alert_transitions",
            "TracerPolicy alert transitions by program, policy, alertname, severity and state (firing, resolved)",
            board.transitions().clone(),
        );
        registry.register_collector(Box::new(PolicyAlertCollector {
            agent: agent.clone(),
            board: board.clone(),
        }));
        if let Some(h) = &hub {
            h.families().register(&mut registry, h.clone());
        }
        Arc::new(Self {
            registry,
            ops,
            agent,
            hub,
            bpf_log,
            board,
        })
    }

    /// The BPF log's counters, for its reader.
    pub fn bpf_log(&self) -> Arc<LogCounters> {
        self.bpf_log.clone()
    }

    /// Counts one operation.
    pub fn record(&self, op: &str, result: &str) {
        self.ops
            .get_or_create(&vec![
                ("op".into(), op.into()),
                ("result".into(), result.into()),
            ])
            .inc();
    }

    /// Text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// A response of the HTTP endpoint: status, content type, body.
pub type Reply = (u16, &'static str, String);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const JSON: &str = "application/json";

impl Metrics {
    /// Answers `GET path` (blocking: takes the agent lock for health).
    pub fn respond(&self, path: &str) -> Reply {
        let path = path.split('?').next().unwrap_or(path);
        match path {
            "/metrics" | "/" => (200, OPENMETRICS, self.render()),
            "/api/health" => {
                let agent = match self.agent.lock() {
                    Ok(a) => a.health(),
                    Err(_) => bpfleet_proto::v1::HealthResponse {
                        ok: false,
                        problems: vec!["agent state lock poisoned".into()],
                        ..Default::default()
                    },
                };
                let h = api::health(agent, self.hub.as_deref(), self.board.all());
                let status = if h.ready { 200 } else { 503 };
                (status, JSON, to_json(&h))
            }
            "/api/analytics" => match &self.hub {
                Some(hub) => (200, JSON, to_json(&api::analytics(hub, mono_ns()))),
                None => (
                    404,
                    JSON,
                    r#"{"error":"the HTTP tracer runtime is off (--no-http-tracer)"}"#.into(),
                ),
            },
            _ => (
                404,
                JSON,
                r#"{"error":"not found; try /metrics, /api/health or /api/analytics"}"#.into(),
            ),
        }
    }
}

fn to_json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v)
        .unwrap_or_else(|e| format!(r#"{{"error":"cannot encode the answer: {e}"}}"#))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// Serves `/metrics`, `/api/health` and `/api/analytics` on `listener`
/// (one request per connection) until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => 0,
                };
            let line = String::from_utf8_lossy(&buf[..n]);
            let mut parts = line.lines().next().unwrap_or("").split_whitespace();
            let (method, path) = (parts.next(), parts.next().map(str::to_string));
            let (status, ctype, body) = match (method, path) {
                (Some("GET"), Some(path)) => {
                    tokio::task::spawn_blocking(move || metrics.respond(&path))
                        .await
                        .unwrap_or_else(|e| (500, JSON, format!(r#"{{"error":"{e}"}}"#)))
                }
                (Some(_), Some(_)) => (405, JSON, r#"{"error":"only GET"}"#.into()),
                _ => (400, JSON, r#"{"error":"not an HTTP request"}"#.into()),
            };
            let head = format!(
                "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                reason(status),
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
