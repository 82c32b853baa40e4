//! Health gates: what an analysis measurement checks, evaluated on the
//! figures the node agents report, with each gate's measured figure and
//! threshold kept as text with units so `status.lastAnalysis` explains itself.
//!
//! Pure functions of the `HealthGates` of the targeting TracerPolicy and two
//! groups of figures: the candidate nodes and the baseline (stable nodes, or
//! the stable figures recorded before a blue-green switch). Gates whose data
//! is missing or too thin (`minSamples`) give [`Outcome::NoData`], which never
//! counts as a pass; the caller applies the `noData` policy and the
//! consecutive-failure limit.

use bpfleet_api::policy::HealthGates;
use bpfleet_api::program::GateResult;

use crate::{Error, Result};

/// Figures one agent reports for one revision over its last sampling
/// interval (deltas, not totals), from the agent's Stats.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HealthSample {
    /// Program errors seen in the interval (helper failures, dropped events).
    pub program_failures: u64,
    /// BPF run time (`run_time_ns`) spent in the interval, all programs.
    pub run_time_ns_delta: u64,
    /// Runs of the revision's programs in the interval.
    pub run_count_delta: u64,
    /// Events its programs dropped in the interval; `None` when the
    /// program does not count them.
    pub events_lost: Option<u64>,
    /// Length of the interval in nanoseconds of wall time.
    pub wall_time_ns: u64,
    /// CPUs of the node; overhead is run time / wall time / cores.
    pub cpu_cores: u32,
    /// Memory of the revision's maps now, in bytes.
    pub map_memory_bytes: u64,
    /// HTTP requests seen by the tracer in the interval.
    pub http_requests: u64,
    /// Of which errors (5xx and failed connections).
    pub http_errors: u64,
    /// p99 latency of those requests in milliseconds, when any were seen.
    pub p99_latency_ms: Option<f64>,
    /// The node's own figures over the interval, on the sample of the
    /// revision active on the node; None on other revisions and when the
    /// agent sent none.
    pub node: Option<NodeSample>,
}

/// Node-wide figures over a sample's interval (every CPU, process and
/// program of the node, not the revision's own), each None when the agent
/// could not read it or the counters went backwards.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeSample {
    /// Softirq time, percent of all CPU time of the node.
    pub softirq_percent: Option<f64>,
    /// System (kernel) time, percent of all CPU time of the node.
    pub system_cpu_percent: Option<f64>,
    /// The agent process's CPU time, percent of one core.
    pub agent_cpu_percent: Option<f64>,
    /// The agent's resident memory at the end of the interval, bytes.
    pub agent_rss_bytes: Option<u64>,
}

/// The highest figure among a group's nodes, and where it was.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Worst {
    pub node: String,
    pub value: f64,
    /// Nodes that reported the figure.
    pub of: usize,
}

impl Worst {
    fn add(slot: &mut Option<Worst>, node: &str, value: Option<f64>) {
        let Some(value) = value.filter(|v| !v.is_nan()) else {
            return;
        };
        match slot {
            Some(w) => {
                w.of += 1;
                if value > w.value {
                    w.value = value;
                    w.node = node.to_string();
                }
            }
            None => {
                *slot = Some(Worst {
                    node: node.to_string(),
                    value,
                    of: 1,
                })
            }
        }
    }
}

/// The worst node of a group on each node-health figure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeHealth {
    pub softirq_percent: Option<Worst>,
    pub system_cpu_percent: Option<Worst>,
    pub agent_cpu_percent: Option<Worst>,
    /// Bytes.
    pub agent_rss_bytes: Option<Worst>,
}

impl HealthSample {
    /// BPF CPU overhead in percent of the node's CPU time, if measurable.
    pub fn cpu_overhead_percent(&self) -> Option<f64> {
        if self.wall_time_ns == 0 || self.cpu_cores == 0 {
            return None;
        }
        Some(
            self.run_time_ns_delta as f64 / self.wall_time_ns as f64 / f64::from(self.cpu_cores)
                * 100.0,
        )
    }
}

/// Figures of a group of nodes, aggregated from their samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupFigures {
    /// Nodes that sent a sample.
    pub nodes: usize,
    /// Program errors summed, plus one per node whose load or attach failed.
    pub program_failures: u64,
    /// Highest per-node CPU overhead, percent.
    pub max_cpu_percent: Option<f64>,
    /// Highest per-node map memory, bytes.
    pub max_map_memory: Option<u64>,
    /// Events dropped, summed over the nodes that count them; `None` when
    /// none does.
    pub events_lost: Option<u64>,
    /// BPF run time and runs, summed over the nodes.
    pub run_time_ns: u64,
    pub runs: u64,
    pub requests: u64,
    pub errors: u64,
    /// Request-weighted mean of the nodes' p99 (percentiles do not add up;
    /// this is the usual approximation and the same on both sides).
    pub p99_ms: Option<f64>,
    /// Worst node on each node-health figure.
    pub node_health: NodeHealth,
}

impl GroupFigures {
    /// Aggregates samples; `load_failures` counts nodes whose load or attach
    /// of the revision failed (each counts as a program failure). Nodes
    /// are unnamed: see [`GroupFigures::from_nodes`].
    pub fn from_samples<'a>(
        samples: impl IntoIterator<Item = &'a HealthSample>,
        load_failures: u64,
    ) -> Self {
        Self::from_nodes(samples.into_iter().map(|s| ("", s)), load_failures)
    }

    /// Aggregates the samples of named nodes: the node-health figures keep
    /// the name of the worst node.
    pub fn from_nodes<'a>(
        samples: impl IntoIterator<Item = (&'a str, &'a HealthSample)>,
        load_failures: u64,
    ) -> Self {
        let mut g = GroupFigures {
            program_failures: load_failures,
            ..Default::default()
        };
        // In f64, as the sum it weighs: a weight saturated in u64 would
        // no longer match it.
        let mut p99_weight = 0.0f64;
        let mut p99_sum = 0.0;
        // The figures come from agents: saturating sums, so that counters
        // no agent reaches (u64::MAX errors on two nodes) cannot wrap round
        // to a small count that passes a gate.
        for (node, s) in samples {
            g.nodes += 1;
            if let Some(n) = &s.node {
                let h = &mut g.node_health;
                Worst::add(&mut h.softirq_percent, node, n.softirq_percent);
                Worst::add(&mut h.system_cpu_percent, node, n.system_cpu_percent);
                Worst::add(&mut h.agent_cpu_percent, node, n.agent_cpu_percent);
                Worst::add(
                    &mut h.agent_rss_bytes,
                    node,
                    n.agent_rss_bytes.map(|b| b as f64),
                );
            }
            g.program_failures = g.program_failures.saturating_add(s.program_failures);
            if let Some(cpu) = s.cpu_overhead_percent() {
                g.max_cpu_percent = Some(g.max_cpu_percent.map_or(cpu, |m| m.max(cpu)));
            }
            g.max_map_memory = Some(
                g.max_map_memory
                    .map_or(s.map_memory_bytes, |m| m.max(s.map_memory_bytes)),
            );
            if let Some(lost) = s.events_lost {
                g.events_lost = Some(g.events_lost.unwrap_or(0).saturating_add(lost));
            }
            g.run_time_ns = g.run_time_ns.saturating_add(s.run_time_ns_delta);
            g.runs = g.runs.saturating_add(s.run_count_delta);
            g.requests = g.requests.saturating_add(s.http_requests);
            g.errors = g.errors.saturating_add(s.http_errors);
            if let Some(p99) = s.p99_latency_ms
                && s.http_requests > 0
            {
                p99_weight += s.http_requests as f64;
                p99_sum += p99 * s.http_requests as f64;
            }
        }
        if p99_weight > 0.0 {
            g.p99_ms = Some(p99_sum / p99_weight);
        }
        g
    }

    /// BPF run time per run in nanoseconds, if anything ran. Summed
    /// before dividing: busy nodes weigh as much as they ran.
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.runs > 0).then(|| self.run_time_ns as f64 / self.runs as f64)
    }

    /// Errors per request, if any request was seen.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// What the candidate is compared with on the ratio gates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Baseline {
    /// Requests behind the figures; `None` when they were recorded earlier
    /// and already checked against `minSamples` then.
    pub requests: Option<u64>,
    pub error_rate: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Runs behind `ns_per_run`; `None` when recorded earlier (checked
    /// then).
    pub runs: Option<u64>,
    pub ns_per_run: Option<f64>,
}

impl Baseline {
    /// The baseline given by a live group of stable nodes.
    pub fn from_group(g: &GroupFigures) -> Self {
        Baseline {
            requests: Some(g.requests),
            error_rate: g.error_rate(),
            p99_ms: g.p99_ms,
            runs: Some(g.runs),
            ns_per_run: g.ns_per_run(),
        }
    }

    fn enough(&self, min_samples: u64) -> bool {
        self.requests.is_none_or(|r| r >= min_samples)
    }

    fn enough_runs(&self, min_samples: u64) -> bool {
        self.runs.is_none_or(|r| r >= min_samples)
    }
}

/// Verdict of one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    /// Some gate had no data or too few samples, and none failed.
    NoData,
}

/// One measurement: the verdict and every gate with its figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub outcome: Outcome,
    pub gates: Vec<GateResult>,
}

impl Measurement {
    /// The failed gates, as `gate: measured (threshold)` for messages.
    pub fn failed_summary(&self) -> String {
        let failed: Vec<String> = self
            .gates
            .iter()
            .filter(|g| !g.passed && g.message.as_deref() != Some(NO_DATA))
            .map(|g| format!("{} {} (threshold {})", g.gate, g.measured, g.threshold))
            .collect();
        failed.join("; ")
    }
}

/// Gate names as written to status.
pub const GATE_PROGRAM_FAILURES: &str = "programFailures";
pub const GATE_CPU: &str = "cpuOverhead";
pub const GATE_MAP_MEMORY: &str = "mapMemory";
pub const GATE_ERROR_RATE: &str = "errorRate";
pub const GATE_P99: &str = "p99Latency";
pub const GATE_RUN_TIME: &str = "runTimePerRun";
pub const GATE_EVENTS_LOST: &str = "eventsLost";
pub const GATE_NODE_SOFTIRQ: &str = "nodeSoftirq";
pub const GATE_NODE_SYSTEM_CPU: &str = "nodeSystemCpu";
pub const GATE_AGENT_CPU: &str = "agentCpu";
pub const GATE_AGENT_RSS: &str = "agentRss";
/// The `message` of a gate that had no data.
pub const NO_DATA: &str = "no data";

/// Evaluates the gates. `traffic` is false for a revision that is loaded but
/// not active (blue-green preview): it serves nothing, so the ratio gates
/// and the node-health gates are not applicable and are left out rather
/// than reported as no data.
pub fn evaluate(
    gates: &HealthGates,
    candidate: &GroupFigures,
    baseline: &Baseline,
    traffic: bool,
) -> Measurement {
    evaluate_on(gates, candidate, baseline, traffic, traffic)
}

/// [`evaluate`] with the two conditions apart: `active` when the candidate
/// runs active on its nodes (the node-health gates apply), `compare` when
/// there is also a stable side to compare with (the ratio gates apply; not
/// on a first rollout).
pub fn evaluate_on(
    gates: &HealthGates,
    candidate: &GroupFigures,
    baseline: &Baseline,
    active: bool,
    compare: bool,
) -> Measurement {
    let traffic = compare;
    let mut out = Vec::new();
    let min_samples = u64::try_from(gates.min_samples.max(1)).unwrap_or(1);
    let max_failures = u64::try_from(gates.max_program_failures.max(0)).unwrap_or(0);

    if candidate.nodes == 0 && candidate.program_failures == 0 {
        out.push(no_data(
            GATE_PROGRAM_FAILURES,
            "no candidate node reported",
            format!("<= {max_failures} failures"),
        ));
    } else {
        out.push(GateResult {
            gate: GATE_PROGRAM_FAILURES.into(),
            passed: candidate.program_failures <= max_failures,
            measured: format!("{} failures", candidate.program_failures),
            threshold: format!("<= {max_failures} failures"),
            message: None,
        });
    }

    if let Some(max_cpu) = gates.max_cpu_overhead_percent {
        let threshold = format!("<= {max_cpu:.2} %");
        out.push(match candidate.max_cpu_percent {
            None => no_data(GATE_CPU, "no run time sample", threshold),
            Some(cpu) => GateResult {
                gate: GATE_CPU.into(),
                passed: cpu <= max_cpu,
                measured: format!("{cpu:.2} %"),
                threshold,
                message: None,
            },
        });
    }

    if let Some(max) = gates.max_events_lost {
        let max = u64::try_from(max.max(0)).unwrap_or(0);
        let threshold = format!("<= {max} events");
        out.push(match candidate.events_lost {
            Some(lost) => GateResult {
                gate: GATE_EVENTS_LOST.into(),
                passed: lost <= max,
                measured: format!("{lost} events"),
                threshold,
                message: None,
            },
            None if candidate.nodes == 0 => {
                no_data(GATE_EVENTS_LOST, "no candidate node reported", threshold)
            }
            None => no_data(
                GATE_EVENTS_LOST,
                "the revision does not count lost events (bpfleet_errors has no slot 1)",
                threshold,
            ),
        });
    }

    if let Some(q) = &gates.max_map_memory {
        out.push(match (parse_quantity(&q.0), candidate.max_map_memory) {
            // A threshold nobody can meet fails the gate, with the reason:
            // better than an analysis that errors on every reconcile.
            (Err(e), mem) => GateResult {
                gate: GATE_MAP_MEMORY.into(),
                passed: false,
                measured: mem.map_or_else(|| "no sample".into(), format_bytes),
                threshold: q.0.clone(),
                message: Some(e.to_string()),
            },
            (Ok(max), None) => no_data(
                GATE_MAP_MEMORY,
                "no map memory sample",
                format!("<= {}", format_bytes(max)),
            ),
            (Ok(max), Some(mem)) => GateResult {
                gate: GATE_MAP_MEMORY.into(),
                passed: mem <= max,
                measured: format_bytes(mem),
                threshold: format!("<= {}", format_bytes(max)),
                message: None,
            },
        });
    }

    if traffic && let Some(ratio) = gates.max_error_rate_ratio {
        out.push(error_rate_gate(ratio, min_samples, candidate, baseline));
    }
    if traffic && let Some(ratio) = gates.max_p99_latency_ratio {
        out.push(p99_gate(ratio, min_samples, candidate, baseline));
    }
    if traffic && let Some(ratio) = gates.max_run_time_ratio {
        out.push(run_time_gate(ratio, min_samples, candidate, baseline));
    }
    if active {
        node_health_gates(gates, candidate, &mut out);
    }

    let outcome = if out
        .iter()
        .any(|g| !g.passed && g.message.as_deref() != Some(NO_DATA))
    {
        Outcome::Fail
    } else if out.iter().any(|g| !g.passed) {
        Outcome::NoData
    } else {
        Outcome::Pass
    };
    Measurement {
        outcome,
        gates: out,
    }
}

fn error_rate_gate(
    ratio: f64,
    min_samples: u64,
    candidate: &GroupFigures,
    baseline: &Baseline,
) -> GateResult {
    let limit = |base: f64| format!("<= {ratio:.2} x {} = {}", pct(base), pct(ratio * base));
    match (candidate.error_rate(), baseline.error_rate) {
        (Some(c), Some(b)) if candidate.requests >= min_samples && baseline.enough(min_samples) => {
            GateResult {
                gate: GATE_ERROR_RATE.into(),
                passed: c <= ratio * b,
                measured: format!(
                    "{} ({}/{} requests)",
                    pct(c),
                    candidate.errors,
                    candidate.requests
                ),
                threshold: limit(b),
                message: None,
            }
        }
        (_, b) => no_data(
            GATE_ERROR_RATE,
            &samples_text(candidate.requests, baseline.requests, min_samples),
            b.map_or_else(|| format!("<= {ratio:.2} x stable"), limit),
        ),
    }
}

fn p99_gate(
    ratio: f64,
    min_samples: u64,
    candidate: &GroupFigures,
    baseline: &Baseline,
) -> GateResult {
    let limit = |base: f64| format!("<= {ratio:.2} x {base:.1} ms = {:.1} ms", ratio * base);
    match (candidate.p99_ms, baseline.p99_ms) {
        (Some(c), Some(b)) if candidate.requests >= min_samples && baseline.enough(min_samples) => {
            GateResult {
                gate: GATE_P99.into(),
                passed: c <= ratio * b,
                measured: format!("{c:.1} ms"),
                threshold: limit(b),
                message: None,
            }
        }
        (_, b) => no_data(
            GATE_P99,
            &samples_text(candidate.requests, baseline.requests, min_samples),
            b.map_or_else(|| format!("<= {ratio:.2} x stable"), limit),
        ),
    }
}

fn run_time_gate(
    ratio: f64,
    min_samples: u64,
    candidate: &GroupFigures,
    baseline: &Baseline,
) -> GateResult {
    let limit = |base: f64| format!("<= {ratio:.2} x {base:.0} ns = {:.0} ns", ratio * base);
    match (candidate.ns_per_run(), baseline.ns_per_run) {
        (Some(c), Some(b))
            if candidate.runs >= min_samples && baseline.enough_runs(min_samples) =>
        {
            GateResult {
                gate: GATE_RUN_TIME.into(),
                passed: c <= ratio * b,
                measured: format!("{c:.0} ns per run ({} runs)", candidate.runs),
                threshold: limit(b),
                message: None,
            }
        }
        (_, b) => no_data(
            GATE_RUN_TIME,
            &match baseline.runs {
                Some(base) => format!(
                    "{} runs on the candidate, {base} on stable, {min_samples} needed on each",
                    candidate.runs
                ),
                None => format!("{} runs, {min_samples} needed", candidate.runs),
            },
            b.map_or_else(|| format!("<= {ratio:.2} x stable"), limit),
        ),
    }
}

/// The absolute node-health gates, judged on the worst candidate node.
fn node_health_gates(gates: &HealthGates, candidate: &GroupFigures, out: &mut Vec<GateResult>) {
    let h = &candidate.node_health;
    let percent = |v: f64| format!("{v:.2} %");
    let of_core = |v: f64| format!("{v:.2} % of one core");
    let mib = |v: f64| format!("{:.1} MiB", v / f64::from(1u32 << 20));
    let nodes = candidate.nodes;
    let limits = [
        (
            GATE_NODE_SOFTIRQ,
            gates.max_node_softirq_percent,
            &h.softirq_percent,
        ),
        (
            GATE_NODE_SYSTEM_CPU,
            gates.max_node_system_cpu_percent,
            &h.system_cpu_percent,
        ),
    ];
    for (gate, max, worst) in limits {
        if let Some(max) = max {
            out.push(node_gate(gate, max, worst.as_ref(), nodes, percent));
        }
    }
    if let Some(max) = gates.max_agent_cpu_percent {
        let worst = h.agent_cpu_percent.as_ref();
        out.push(node_gate(GATE_AGENT_CPU, max, worst, nodes, of_core));
    }
    if let Some(max) = gates.max_agent_rss_mib {
        let (max, worst) = (
            max as f64 * f64::from(1u32 << 20),
            h.agent_rss_bytes.as_ref(),
        );
        out.push(node_gate(GATE_AGENT_RSS, max, worst, nodes, mib));
    }
}

/// One node-health gate: `max` and the worst figure in the same unit,
/// shown with `show`.
fn node_gate(
    gate: &str,
    max: f64,
    worst: Option<&Worst>,
    nodes: usize,
    show: impl Fn(f64) -> String,
) -> GateResult {
    let threshold = format!("<= {}", show(max));
    match worst {
        None if nodes == 0 => no_data(gate, "no candidate node reported", threshold),
        None => no_data(
            gate,
            "no node figures from the candidate nodes' agents",
            threshold,
        ),
        Some(w) => GateResult {
            gate: gate.into(),
            passed: w.value <= max,
            measured: format!("{} on {}", show(w.value), node_name(&w.node)),
            threshold,
            message: Some(format!(
                "worst of {} candidate node(s) reporting: {}",
                w.of,
                node_name(&w.node)
            )),
        },
    }
}

fn node_name(node: &str) -> &str {
    if node.is_empty() { "a node" } else { node }
}

fn samples_text(candidate: u64, baseline: Option<u64>, min: u64) -> String {
    match baseline {
        Some(b) => format!("{candidate} candidate / {b} stable requests, need {min} each"),
        None => format!("{candidate} candidate requests, need {min}"),
    }
}

fn no_data(gate: &str, measured: &str, threshold: String) -> GateResult {
    GateResult {
        gate: gate.into(),
        passed: false,
        measured: measured.into(),
        threshold,
        message: Some(NO_DATA.into()),
    }
}

fn pct(rate: f64) -> String {
    format!("{:.2} %", rate * 100.0)
}

/// Bytes as B, KiB, MiB or GiB with one decimal.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            return format!("{:.1} {unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
}

/// Reads a Kubernetes quantity of bytes (`64Mi`, `1G`, `1048576`).
pub fn parse_quantity(q: &str) -> Result<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let multiplier: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        _ => return Err(Error::InvalidQuantity(q.into())),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| Error::InvalidQuantity(q.into()))?;
    if !value.is_finite() || value < 0.0 {
        return Err(Error::InvalidQuantity(q.into()));
    }
    Ok((value * multiplier as f64).round() as u64)
}

#[cfg(test)]
mod tests;
