//! `TracerPolicy`: how a program behaves on the node (runtime configuration,
//! resource budgets) and what counts as healthy during a rollout.
//!
//! Cluster-scoped on purpose: the programs it configures are cluster-scoped
//! and run node-wide, in every namespace at once. A namespaced policy would let
//! whoever may write in one namespace change sampling, filters or redaction
//! for traffic of all namespaces, and would make "which policy wins" depend on
//! namespace layout. Per-namespace scoping is a filter *inside* the policy
//! (`config.filters.namespaces`), granted by cluster RBAC.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Behaviour and health gates for the programs it targets.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bpfleet.dev",
    version = "v1alpha1",
    kind = "TracerPolicy",
    doc = "Runtime configuration, resource budgets and health gates for the TracerPrograms it targets.",
    plural = "tracerpolicies",
    singular = "tracerpolicy",
    shortname = "tpol",
    category = "bpfleet",
    status = "TracerPolicyStatus",
    printcolumn = r#"{"name":"Programs","type":"string","jsonPath":".status.targetSummary"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Alerts","type":"string","jsonPath":".status.conditions[?(@.type==\"AlertsFiring\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TracerPolicySpec {
    /// Which TracerPrograms this policy applies to.
    pub targets: PolicyTargets,
    /// Runtime configuration written into the program's config map, applied
    /// without reloading the program.
    #[serde(default)]
    pub config: RuntimeConfig,
    /// Resource budgets per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budgets: Option<ResourceBudgets>,
    /// What canary and blue-green analysis checks.
    #[serde(default)]
    pub health: HealthGates,
    /// Alerts evaluated by the agent of every node holding a targeted
    /// program, on its own sliding windows of that program's figures:
    /// `ErrorRate` and `P99Latency` per HTTP series (service, route, side)
    /// of the program's exchanges, needing at least 20 requests in the
    /// window; `CpuOverheadPercent`, `EventsLost` and `ProgramErrors` from
    /// the program's kernel figures. Firing state is exported by each agent
    /// (`bpfleet_agent_policy_alert_firing`, `/api/health`) and summed up
    /// in `status.firingAlerts` and the `AlertsFiring` condition.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub alerts: Vec<AlertRule>,
}

/// Programs by name, by label, or both (a program matching either is targeted).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("size(self.programNames) > 0 || has(self.programSelector)")
    .message("set programNames, programSelector, or both"))]
pub struct PolicyTargets {
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub program_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_selector: Option<LabelSelector>,
}

/// Values the program reads from its config map at run time.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Fraction kept, from 0.0001 to 1 (all), in the program's unit. The
    /// HTTP tracer counts every exchange in the kernel either way; this is
    /// the share of connections whose exchanges are also sent whole to the
    /// agent as events (spans, analytics) - none when unset. With
    /// `exchangeEvents: All` it is the share of connections traced at all
    /// (all when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0001, max = 1.0))]
    pub sampling_rate: Option<f64>,
    /// Which end of a connection the HTTP tracer traces: the accepting
    /// process (`Server`, the default), the connecting one (`Client`), or
    /// `Both` (every request then counts once per traced end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends: Option<TracedEnds>,
    /// How the HTTP tracer reports exchanges: `Sampled` (the default)
    /// counts them in the kernel and sends only sampled connections (and
    /// what the kernel cannot frame, such as pipelined requests) as
    /// events; `All` sends every read and write as an event and counts in
    /// the agent (the tracer's cost grows with it; body sizes and spans for
    /// every exchange).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_events: Option<ExchangeEvents>,
    /// Bytes of payload captured per message (request line and headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 64, max = 4096))]
    pub payload_bytes: Option<i32>,
    #[serde(default)]
    pub filters: Filters,
    #[serde(default)]
    pub redaction: Redaction,
    /// How request paths become `http.route` values (HTTP tracer).
    #[serde(default)]
    pub routes: RouteNaming,
}

/// The ends of a connection traced.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracedEnds {
    Server,
    Client,
    Both,
}

/// What travels to the agent as events.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExchangeEvents {
    Sampled,
    All,
}

/// Route naming for the HTTP tracer: configured patterns first, then a
/// bounded form of unmatched paths, so metric series stay few. Sent by the
/// operator like `redaction` (an agent's own `--http-rules` file wins; its
/// `--http-route` patterns come before these). A pattern that cannot be
/// parsed, or that an earlier one shadows (`/api/*` before
/// `/api/users/{id}`), puts the policy in `InvalidSpec`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteNaming {
    /// Patterns such as `/api/users/{id}` or `/static/*` (`*` only last);
    /// the first match names the route.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(regex(pattern = r"^/[^?#\s]{0,255}$")))]
    pub patterns: Vec<String>,
    /// What a path no pattern matches becomes.
    #[serde(default)]
    pub unmatched: UnmatchedRoutes,
    /// Distinct routes named from unmatched paths per node before further
    /// ones become `/*` (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_routes: Option<i32>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UnmatchedRoutes {
    /// Identifier-like segments become `{id}`, at most three segments.
    #[default]
    Heuristic,
    /// Every unmatched path is `/*`.
    Wildcard,
}

/// Restrict what is traced. Empty lists mean no restriction.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Filters {
    /// Processes traced, by host process id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(range(min = 1)))]
    pub pids: Vec<i32>,
    /// Kubernetes namespaces whose pods are traced. The agent drops the
    /// exchanges of every other process (pods of other namespaces and
    /// processes outside pods) before anything is recorded or exported; the
    /// kernel side still sees their syscalls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))
    )]
    pub namespaces: Vec<String>,
    /// Only connections with one of these ports at either end are traced
    /// (a server's port, or the port a client dials).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(range(min = 1, max = 65535)))]
    pub ports: Vec<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// Connections with one of these ports at either end are never traced.
    #[schemars(length(max = 64), inner(range(min = 1, max = 65535)))]
    pub exclude_ports: Vec<i32>,
}

/// What is removed before anything leaves the node. The defaults cover the
/// usual credentials; lists here add to them. The operator sends these to
/// every node holding a targeted program, where the agent's HTTP tracer
/// applies them from its next batch of events; an agent started with its
/// own `--http-rules` file keeps that file's rules instead (the node-local
/// override wins; the program's List says so). A pattern that does not
/// compile puts the policy in `InvalidSpec` and nothing of it is written.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Redaction {
    /// Header names (case-insensitive) whose values are replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$"))
    )]
    pub headers: Vec<String>,
    /// Query parameter names whose values are replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    pub query_params: Vec<String>,
    /// Regular expressions (Rust `regex` syntax) for secrets in the command
    /// lines that spans carry (`process.command_line`). Each is matched
    /// against the command line as read; the part of a match outside
    /// capture groups 1 (kept: the flag before the secret) and 2 (kept: a
    /// delimiter after it) is replaced, and an empty match replaces
    /// nothing. The built-in patterns cover `--password x`, `--token=x` and
    /// `user:pass@` in URLs; the header and query parameter lists hold on
    /// command lines too (`-H 'Cookie: ...'`, `?token=...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 512)))]
    pub command_line_patterns: Vec<String>,
    /// Turn the built-in defaults off (not recommended).
    #[serde(default)]
    pub disable_defaults: bool,
}

/// Per-node limits of the programs the policy applies to, together.
/// `maxPrograms` and `maxMapMemory` travel with every Load of such a
/// program: the agent counts the policy's programs on its node and refuses
/// the Load that would pass one (`BudgetExceeded`, naming the policy and
/// the budget; nothing of it stays loaded), on top of its own flags.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceBudgets {
    /// Map memory of all targeted programs on a node, e.g. `64Mi`, as the
    /// kernel accounts it; a new revision's maps are estimated before it is
    /// loaded. Not a quantity: the policy is `InvalidSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_map_memory: Option<Quantity>,
    /// Most BPF run time of each targeted program on a node, in percent
    /// of that node's whole CPU time (run time over wall time times online
    /// CPUs, measured by the node's agent over each enforcement period, 5 s
    /// by default). Over it, the agent halves the program's sampling
    /// (`config.samplingRate`) each period, down to a floor, when
    /// `reduceSamplingOnBreach` is true, and doubles it back up to the
    /// policy's value once the share falls under a quarter of it. A program
    /// that does not declare sampling is never cut and is reported.
    /// Reported as the `BudgetEnforced` condition on the TracerProgram and
    /// this policy. `health.maxCpuOverheadPercent` is the rollout gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 100.0))]
    pub max_cpu_overhead_percent: Option<f64>,
    /// Targeted programs loaded per node (revisions of one program count
    /// once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_programs: Option<i32>,
    /// Lower the sampling rate automatically while over
    /// `maxCpuOverheadPercent` (false: the breach is only reported).
    #[serde(default = "yes")]
    pub reduce_sampling_on_breach: bool,
}

fn yes() -> bool {
    true
}

/// Health gates for analysis steps. A gate is skipped when unset.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthGates {
    /// Load, attach or program errors tolerated on candidate nodes.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_program_failures: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 100.0))]
    pub max_cpu_overhead_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_map_memory: Option<Quantity>,
    /// Candidate error rate may be at most this multiple of the stable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub max_error_rate_ratio: Option<f64>,
    /// Candidate p99 latency may be at most this multiple of the stable one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub max_p99_latency_ratio: Option<f64>,
    /// Events the candidate's programs may drop per measurement, summed over
    /// the candidate nodes (a full ring buffer: `BPFLEET_LOST()` in
    /// `bpfleet_gate.h`; the HTTP tracer counts its own). A program built
    /// without that counter gives no data, never a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_events_lost: Option<i64>,
    /// Candidate BPF run time per run (the kernel's `run_time_ns` over
    /// `run_cnt`, every program of the revision) may be at most this
    /// multiple of the stable revision's over the same interval: a revision
    /// that is correct but costs more per event fails. Judged when each
    /// side ran `minSamples` times; needs BPF run-time stats on the node
    /// (the agent turns them on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub max_run_time_ratio: Option<f64>,
    /// Node health, judged on each node where the candidate is active, over
    /// the measurement's sample window; the worst node counts. These are
    /// node-wide figures (every CPU, every process, every program), not the
    /// candidate's own: they catch a revision whose side effects (packets
    /// it makes the kernel handle, work it causes in the agent) load the
    /// node. Not judged for a blue-green preview, which carries no
    /// traffic. A node whose agent sends no such figures gives no data.
    ///
    /// Share of all CPU time the node spent in softirq (network receive
    /// and transmit, timers, RCU), percent, from `/proc/stat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 100.0))]
    pub max_node_softirq_percent: Option<f64>,
    /// Share of all CPU time the node spent in the kernel on behalf of
    /// processes (`system` in `/proc/stat`), percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 100.0))]
    pub max_node_system_cpu_percent: Option<f64>,
    /// CPU time of the bpfleet agent process on the node, percent of one
    /// core (it can exceed 100 with several threads busy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 100000.0))]
    pub max_agent_cpu_percent: Option<f64>,
    /// Resident memory of the bpfleet agent process at the end of the
    /// window, MiB.
    #[serde(
        default,
        rename = "maxAgentRssMiB",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(range(min = 1))]
    pub max_agent_rss_mib: Option<i64>,
    /// Requests (runs, for `maxRunTimeRatio`) needed on each side before
    /// ratios are judged.
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1))]
    pub min_samples: i32,
    /// Failed measurements in a row that fail the analysis.
    #[serde(default = "default_consecutive_failures")]
    #[schemars(range(min = 1, max = 100))]
    pub consecutive_failure_limit: i32,
    /// What too few samples means. It never counts as a pass.
    #[serde(default)]
    pub no_data: NoDataPolicy,
}

fn default_min_samples() -> i32 {
    100
}
fn default_consecutive_failures() -> i32 {
    3
}

impl Default for HealthGates {
    fn default() -> Self {
        Self {
            max_program_failures: 0,
            max_cpu_overhead_percent: None,
            max_map_memory: None,
            max_error_rate_ratio: Some(1.1),
            max_p99_latency_ratio: Some(1.2),
            max_run_time_ratio: None,
            max_node_softirq_percent: None,
            max_node_system_cpu_percent: None,
            max_agent_cpu_percent: None,
            max_agent_rss_mib: None,
            max_events_lost: None,
            min_samples: default_min_samples(),
            consecutive_failure_limit: default_consecutive_failures(),
            no_data: NoDataPolicy::Inconclusive,
        }
    }
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NoDataPolicy {
    /// Pause the rollout and wait for data or a person.
    #[default]
    Inconclusive,
    /// Treat as a failed gate.
    Fail,
}

/// An alert evaluated in-process on each node over a sliding window.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertRule {
    #[schemars(regex(pattern = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"))]
    pub name: String,
    pub signal: AlertSignal,
    /// Fires when the signal is above this value (ratio 0..1 for rates,
    /// seconds for latency, percent for CPU, count for events lost).
    #[schemars(range(min = 0.0))]
    pub threshold: f64,
    /// Window the signal is computed over.
    #[serde(default)]
    pub window: AlertWindow,
    #[serde(default)]
    pub severity: Severity,
    /// ErrorRate and P99Latency: a node whose window holds fewer requests
    /// than this never fires (a rate of 1 error in 2 requests says
    /// little). Unset: 20. Ignored by the kernel signals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub min_requests: Option<u64>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertSignal {
    ErrorRate,
    P99Latency,
    CpuOverheadPercent,
    EventsLost,
    ProgramErrors,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AlertWindow {
    #[serde(rename = "1m")]
    OneMinute,
    #[default]
    #[serde(rename = "5m")]
    FiveMinutes,
    #[serde(rename = "15m")]
    FifteenMinutes,
    #[serde(rename = "1h")]
    OneHour,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Severity {
    #[default]
    Warning,
    Critical,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TracerPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Names of the programs currently targeted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targeted_programs: Vec<String>,
    /// Count of targeted programs, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_summary: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The policy's alerts that fire now, on the nodes of the programs it
    /// applies to (as of their programs' last reconcile; at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub firing_alerts: Vec<PolicyFiringAlert>,
}

/// A policy alert that fires, over every program the policy applies to.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyFiringAlert {
    pub alert: String,
    /// `Warning` or `Critical`.
    pub severity: String,
    /// Nodes where it fires (a node counts once per program).
    pub nodes: i32,
    /// The first of them by name (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub node_names: Vec<String>,
    /// Programs on whose nodes it fires (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub programs: Vec<String>,
}
