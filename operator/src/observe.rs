//! From what agents answer to what the state machine reads: a
//! [`NodeView`] per node (everything its agent holds, every program, built
//! from one `List` and one `Stats`), then per program a [`NodeReport`],
//! with health samples as per-interval deltas of the agent's cumulative
//! counters ([`SampleBook`]) and the failures of the operator's own calls
//! ([`FailureBook`]: the agent keeps no record of a load it refused).
//!
//! Pure apart from the books' memory; the clock comes in as nanoseconds of
//! a monotonic clock (the time the agent answered).

use std::collections::HashMap;
use std::sync::Arc;

use bpfleet_proto::v1 as pb;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::gates::{HealthSample, NodeSample};
use crate::rollout::{LoadedRevision, NodeFailure, NodeReport, SOURCE_UNAVAILABLE};

/// A sample covers at least this much time; a reconcile sooner than this
/// after the window opened reuses the previous sample.
pub const MIN_WINDOW_NS: u64 = 1_000_000_000;
/// The window restarts once it is this long, so samples follow the present.
pub const MAX_WINDOW_NS: u64 = 10_000_000_000;
/// Longest failure message kept in status (verifier logs can be long).
pub const MAX_MESSAGE: usize = 900;

/// What one node's agent holds, every program, in the few fields the
/// operator reads (pins, links and entries of `List` are dropped: a fleet
/// of these stays small).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    /// Sorted by program name.
    pub programs: Vec<ProgramView>,
    /// The node's counters of this answer (also on each revision's
    /// figures); here as well for a node that holds no program.
    pub node: Option<Arc<NodeCounters>>,
}

/// The node's cumulative counters from `Stats` (see `pb::NodeFigures`),
/// the same for every revision on the node.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NodeCounters {
    pub cpu_total_jiffies: Option<u64>,
    pub cpu_softirq_jiffies: Option<u64>,
    pub cpu_system_jiffies: Option<u64>,
    pub cpus: Option<u32>,
    pub agent_cpu_jiffies: Option<u64>,
    pub agent_rss_bytes: Option<u64>,
    /// Whether the node's kernel has BTF (`/sys/kernel/btf/vmlinux`); None
    /// when the agent did not say. Not a counter: it does not change while
    /// the node runs, so [`NodeCounters::since`] ignores it.
    pub btf: Option<bool>,
}

impl From<&pb::NodeFigures> for NodeCounters {
    fn from(n: &pb::NodeFigures) -> Self {
        NodeCounters {
            cpu_total_jiffies: n.cpu_total_jiffies,
            cpu_softirq_jiffies: n.cpu_softirq_jiffies,
            cpu_system_jiffies: n.cpu_system_jiffies,
            cpus: n.cpus,
            agent_cpu_jiffies: n.agent_cpu_jiffies,
            agent_rss_bytes: n.agent_rss_bytes,
            btf: n.btf_present,
        }
    }
}

impl NodeCounters {
    /// The node's figures between `base` and `self` (later). A counter
    /// missing at either end, or lower at the end (the agent restarted,
    /// the node rebooted), gives no figure; a window in which no CPU time
    /// passed gives no percentages.
    pub fn since(&self, base: &NodeCounters) -> NodeSample {
        let delta = |cur: Option<u64>, base: Option<u64>| cur?.checked_sub(base?);
        let total = delta(self.cpu_total_jiffies, base.cpu_total_jiffies).filter(|t| *t > 0);
        let share = |part: Option<u64>| Some(part? as f64 / total? as f64 * 100.0);
        let cpus = self.cpus.filter(|c| *c > 0 && base.cpus == self.cpus);
        NodeSample {
            softirq_percent: share(delta(self.cpu_softirq_jiffies, base.cpu_softirq_jiffies)),
            system_cpu_percent: share(delta(self.cpu_system_jiffies, base.cpu_system_jiffies)),
            // Of one core: the node's jiffies over its CPUs are the
            // window's length in the same unit (USER_HZ) as the agent's.
            agent_cpu_percent: share(delta(self.agent_cpu_jiffies, base.agent_cpu_jiffies))
                .and_then(|p| Some(p * f64::from(cpus?))),
            agent_rss_bytes: self.agent_rss_bytes,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgramView {
    pub program: String,
    /// The policy-configuration stamp the agent reports (0: defaults).
    pub config_stamp: u64,
    /// Where the program stands against its CPU budget on the node (None:
    /// no budget, or an agent that predates budgets).
    pub cpu_budget: Option<pb::CpuBudgetStatus>,
    /// Sorted by revision.
    pub revisions: Vec<RevisionView>,
    /// The policy alerts firing for the program on the node: (name,
    /// severity), sorted, each once (an alert firing on several HTTP
    /// series counts once).
    pub firing_alerts: Vec<(String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RevisionView {
    pub revision: String,
    pub active: bool,
    /// From `Stats`; None when the agent reported no figures for it.
    pub figures: Option<Figures>,
}

/// The cumulative counters of one revision on one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Figures {
    pub run_time_ns: u64,
    /// Runs of the revision's programs (`run_cnt`), with `run_time_ns`.
    pub run_count: u64,
    /// Events its programs dropped; `None` when the object cannot say.
    pub events_lost: Option<u64>,
    pub program_errors: u64,
    pub map_memory_bytes: u64,
    /// Boxed: most programs trace no HTTP, and a fleet holds many of these.
    pub http: Option<Box<pb::HttpFigures>>,
    /// The node's counters, answered with these figures (node-wide: one
    /// allocation shared by every revision of the node's answer and the
    /// sample windows based on it, not a copy per revision).
    pub node: Option<Arc<NodeCounters>>,
}

impl From<&pb::RevisionStats> for Figures {
    fn from(s: &pb::RevisionStats) -> Self {
        Figures {
            run_time_ns: s.run_time_ns,
            run_count: s.run_cnt,
            events_lost: s.events_lost,
            program_errors: s.program_errors,
            map_memory_bytes: s.map_memory_bytes,
            http: s.http.clone().map(Box::new),
            node: None,
        }
    }
}

impl NodeView {
    /// The view of an agent's `List` and `Stats` answers (of every program,
    /// or of one: the view then holds only that one).
    pub fn from_answers(list: &pb::ListResponse, stats: &pb::StatsResponse) -> Self {
        let node = stats.node.as_ref().map(|n| Arc::new(NodeCounters::from(n)));
        let figures: HashMap<(&str, &str), &pb::RevisionStats> = stats
            .revisions
            .iter()
            .map(|s| ((s.program.as_str(), s.revision.as_str()), s))
            .collect();
        let mut programs: Vec<ProgramView> = list
            .programs
            .iter()
            .map(|p| {
                let active = active_of(p);
                let mut revisions: Vec<RevisionView> = p
                    .revisions
                    .iter()
                    .map(|r| RevisionView {
                        revision: r.revision.clone(),
                        active: active == Some(r.revision.as_str()),
                        figures: figures
                            .get(&(p.program.as_str(), r.revision.as_str()))
                            .map(|s| Figures {
                                node: node.clone(),
                                ..Figures::from(*s)
                            }),
                    })
                    .collect();
                revisions.sort_by(|a, b| a.revision.cmp(&b.revision));
                // An agent lists a revision once; should one repeat, the
                // first wins (two entries named active_revision would make
                // two active revisions).
                revisions.dedup_by(|a, b| a.revision == b.revision);
                let mut firing_alerts: Vec<(String, String)> = p
                    .firing_alerts
                    .iter()
                    .map(|a| (a.name.clone(), a.severity.clone()))
                    .collect();
                firing_alerts.sort();
                firing_alerts.dedup();
                ProgramView {
                    program: p.program.clone(),
                    config_stamp: crate::runtime_config::reported_stamp(&p.config),
                    cpu_budget: p.cpu_budget.clone(),
                    revisions,
                    firing_alerts,
                }
            })
            .collect();
        programs.sort_by(|a, b| a.program.cmp(&b.program));
        // An agent lists a program once; should one repeat it, the first wins.
        programs.dedup_by(|a, b| a.program == b.program);
        NodeView { programs, node }
    }

    /// The configuration stamp of `program` on the node, when it holds it.
    pub fn config_stamp(&self, program: &str) -> Option<u64> {
        self.programs
            .binary_search_by(|p| p.program.as_str().cmp(program))
            .ok()
            .map(|i| self.programs[i].config_stamp)
    }

    /// The CPU budget status of `program` on the node, when it holds it
    /// with a budget.
    pub fn cpu_budget(&self, program: &str) -> Option<&pb::CpuBudgetStatus> {
        self.programs
            .binary_search_by(|p| p.program.as_str().cmp(program))
            .ok()
            .and_then(|i| self.programs[i].cpu_budget.as_ref())
    }

    /// The policy alerts firing for `program` on the node.
    pub fn firing_alerts(&self, program: &str) -> &[(String, String)] {
        self.programs
            .binary_search_by(|p| p.program.as_str().cmp(program))
            .map_or(&[], |i| self.programs[i].firing_alerts.as_slice())
    }

    /// What the node holds of `program` (nothing when it holds none).
    pub fn program(&self, program: &str) -> &[RevisionView] {
        self.programs
            .binary_search_by(|p| p.program.as_str().cmp(program))
            .map_or(&[], |i| self.programs[i].revisions.as_slice())
    }
}

/// The revision a program's `List` entry says is active: its
/// `active_revision` when set, else the one revision whose state is
/// `ACTIVE`. A program runs at most one revision, so an entry that names
/// two (two `ACTIVE` states and no `active_revision`) names none: the
/// machine then treats the node as running nothing it can count on, rather
/// than picking one of two claims.
fn active_of(p: &pb::ProgramInfo) -> Option<&str> {
    if !p.active_revision.is_empty() {
        return Some(p.active_revision.as_str());
    }
    let mut active = p
        .revisions
        .iter()
        .filter(|r| r.state == pb::RevisionState::Active as i32);
    match (active.next(), active.next()) {
        (Some(r), None) => Some(r.revision.as_str()),
        _ => None,
    }
}

/// The counters of one revision at one moment.
#[derive(Clone, Debug, PartialEq)]
struct Snapshot {
    at_ns: u64,
    run_time_ns: u64,
    run_count: u64,
    events_lost: Option<u64>,
    program_errors: u64,
    http: Option<Box<pb::HttpFigures>>,
    node: Option<Arc<NodeCounters>>,
}

/// One revision's window on one node: the counters at its start and the
/// last sample computed.
#[derive(Debug)]
struct Window {
    revision: String,
    base: Snapshot,
    last: Option<HealthSample>,
}

/// Per program, node and revision: the counters at the start of the
/// current window and the last sample computed. Nested by program and node
/// so that a fleet of windows costs one entry per loaded revision.
#[derive(Default, Debug)]
pub struct SampleBook {
    programs: HashMap<String, HashMap<String, Vec<Window>>>,
}

impl SampleBook {
    /// The health sample of `revision` of `program` on `node`, from its
    /// cumulative figures at `now_ns` (when the agent answered); None until
    /// a window of [`MIN_WINDOW_NS`] has passed.
    pub fn sample(
        &mut self,
        node: &str,
        program: &str,
        revision: &str,
        figures: &Figures,
        now_ns: u64,
        cpu_cores: u32,
    ) -> Option<HealthSample> {
        let cur = Snapshot {
            at_ns: now_ns,
            run_time_ns: figures.run_time_ns,
            run_count: figures.run_count,
            events_lost: figures.events_lost,
            program_errors: figures.program_errors,
            http: figures.http.clone(),
            node: figures.node.clone(),
        };
        // Looked up before inserting: the keys are cloned only for a new
        // program or node, not on every call.
        if !self.programs.contains_key(program) {
            self.programs.insert(program.to_string(), HashMap::new());
        }
        let nodes = self.programs.get_mut(program)?;
        if !nodes.contains_key(node) {
            nodes.insert(node.to_string(), Vec::new());
        }
        let windows = nodes.get_mut(node)?;
        let Some(w) = windows.iter_mut().find(|w| w.revision == revision) else {
            // One or two revisions per node: no room for four (what a
            // plain push would reserve), times every node and program.
            windows.reserve_exact(1);
            windows.push(Window {
                revision: revision.to_string(),
                base: cur,
                last: None,
            });
            return None;
        };
        let base = &w.base;
        let reset = cur.run_time_ns < base.run_time_ns
            || cur.run_count < base.run_count
            || cur.events_lost.unwrap_or(0) < base.events_lost.unwrap_or(0)
            || cur.program_errors < base.program_errors
            || http_reset(base.http.as_deref(), cur.http.as_deref());
        if reset {
            // The revision was reloaded: its counters started again.
            w.base = cur;
            w.last = None;
            return None;
        }
        let elapsed = now_ns.saturating_sub(base.at_ns);
        if elapsed < MIN_WINDOW_NS {
            return w.last.clone();
        }
        let mut s = HealthSample {
            program_failures: cur.program_errors - base.program_errors,
            run_time_ns_delta: cur.run_time_ns - base.run_time_ns,
            run_count_delta: cur.run_count - base.run_count,
            events_lost: cur
                .events_lost
                .map(|c| c.saturating_sub(base.events_lost.unwrap_or(0))),
            wall_time_ns: elapsed,
            cpu_cores,
            map_memory_bytes: figures.map_memory_bytes,
            node: cur
                .node
                .as_ref()
                .and_then(|c| Some(c.since(base.node.as_ref()?))),
            ..Default::default()
        };
        if let Some(h) = &cur.http {
            let zero = pb::HttpFigures::default();
            let b = base.http.as_deref().unwrap_or(&zero);
            s.http_requests = h.requests.saturating_sub(b.requests);
            s.http_errors = h.errors.saturating_sub(b.errors);
            s.p99_latency_ms = quantile_ms(h, b, 0.99);
        }
        if elapsed >= MAX_WINDOW_NS {
            w.base = cur;
        }
        w.last = Some(s.clone());
        Some(s)
    }

    /// Forgets every window of `program` whose (node, revision) is not
    /// `live`, so the book stays as large as what is loaded.
    pub fn retain(&mut self, program: &str, live: impl Fn(&str, &str) -> bool) {
        let Some(nodes) = self.programs.get_mut(program) else {
            return;
        };
        nodes.retain(|node, windows| {
            windows.retain(|w| live(node, &w.revision));
            !windows.is_empty()
        });
        if nodes.is_empty() {
            self.programs.remove(program);
        }
    }

    /// Windows kept, all programs.
    pub fn len(&self) -> usize {
        self.programs
            .values()
            .flat_map(|nodes| nodes.values())
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty()
    }
}

fn http_reset(base: Option<&pb::HttpFigures>, cur: Option<&pb::HttpFigures>) -> bool {
    match (base, cur) {
        (Some(b), Some(c)) => {
            c.requests < b.requests
                || c.errors < b.errors
                || b.latency_bounds_seconds != c.latency_bounds_seconds
        }
        (Some(_), None) => true,
        _ => false,
    }
}

/// The `q` quantile in milliseconds of the requests between two cumulative
/// histograms, interpolated linearly inside its bucket as Prometheus'
/// `histogram_quantile` does; the +Inf bucket answers its lower bound.
///
/// Bucket bounds that are not finite, non-negative and strictly ascending
/// (as no agent sends them) give no quantile: a latency interpolated from
/// them could be negative or NaN, which a gate would read as a pass.
pub fn quantile_ms(cur: &pb::HttpFigures, base: &pb::HttpFigures, q: f64) -> Option<f64> {
    let bounds = &cur.latency_bounds_seconds;
    if cur.latency_bucket_counts.len() != bounds.len() + 1 {
        return None;
    }
    if bounds.iter().any(|b| !b.is_finite() || *b < 0.0) || bounds.windows(2).any(|w| w[0] >= w[1])
    {
        return None;
    }
    let delta: Vec<u64> = cur
        .latency_bucket_counts
        .iter()
        .enumerate()
        .map(|(i, c)| c.saturating_sub(base.latency_bucket_counts.get(i).copied().unwrap_or(0)))
        .collect();
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut before = 0u64;
    for (i, &n) in delta.iter().enumerate() {
        if n > 0 && (before + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let Some(&upper) = bounds.get(i) else {
                return Some(lower * 1000.0);
            };
            let frac = ((rank - before as f64) / n as f64).clamp(0.0, 1.0);
            return Some((lower + (upper - lower) * frac) * 1000.0);
        }
        before += n;
    }
    bounds.last().map(|b| b * 1000.0)
}

type Key = (String, String, String);

/// Failures of the operator's calls to agents, per (node, program,
/// revision), kept until a later call for the same revision succeeds, with
/// how many calls in a row failed for the same reason.
#[derive(Default, Debug)]
pub struct FailureBook {
    failures: HashMap<Key, NodeFailure>,
}

impl FailureBook {
    /// Records `failure` (its `attempts` ignored): one more attempt when
    /// the last call for that revision failed for the same reason, else the
    /// first.
    pub fn record(&mut self, node: &str, program: &str, mut failure: NodeFailure) {
        let key = (
            node.to_string(),
            program.to_string(),
            failure.revision.clone(),
        );
        failure.attempts = match self.failures.get(&key) {
            Some(last) if last.reason == failure.reason => last.attempts.saturating_add(1),
            _ => 1,
        };
        self.failures.insert(key, failure);
    }

    pub fn clear(&mut self, node: &str, program: &str, revision: &str) {
        self.failures
            .remove(&(node.to_string(), program.to_string(), revision.to_string()));
    }

    /// Every failure recorded for `program` on `node`.
    pub fn of(&self, node: &str, program: &str) -> Vec<NodeFailure> {
        let mut v: Vec<NodeFailure> = self
            .failures
            .iter()
            .filter(|(k, _)| k.0 == node && k.1 == program)
            .map(|(_, f)| f.clone())
            .collect();
        v.sort_by(|a, b| a.revision.cmp(&b.revision));
        v
    }

    /// Forgets everything about `program` (it was deleted).
    pub fn forget(&mut self, program: &str) {
        self.failures.retain(|k, _| k.1 != program);
    }
}

/// The failure a refused agent call means for a revision, or None when the
/// agent was not reached at all (that is `reachable: false`, not a fault of
/// the revision).
pub fn failure_of(status: &tonic::Status, revision: &str, at: Time) -> Option<NodeFailure> {
    use tonic::Code;
    let msg = status.message();
    let reason = match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            return None;
        }
        Code::InvalidArgument if msg.contains("verifier rejected") => "VerifierRejected",
        Code::InvalidArgument => "InvalidRequest",
        Code::PermissionDenied | Code::Unauthenticated => "LoadRefused",
        Code::FailedPrecondition
            if msg.contains("not supported") || msg.contains("unsupported") =>
        {
            "Unsupported"
        }
        Code::FailedPrecondition => "PreconditionFailed",
        Code::ResourceExhausted => "BudgetExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "Conflict",
        // The agent could not pull the source (its registry down, refusing
        // the credentials, not having the image): the node waits and the
        // load is retried, see `rollout::nodes::retry_delay`.
        Code::Aborted => SOURCE_UNAVAILABLE,
        _ => "AgentError",
    };
    Some(NodeFailure {
        revision: revision.to_string(),
        reason: reason.to_string(),
        message: truncate(msg, MAX_MESSAGE),
        at,
        attempts: 1,
    })
}

/// `s` cut to at most `max` bytes on a character boundary, marked with "…".
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// What the machine reads about `program` on one node, from its agent's
/// view answered at `at_ns`.
pub fn report(
    node: &str,
    program: &str,
    view: &NodeView,
    samples: &mut SampleBook,
    failures: &FailureBook,
    at_ns: u64,
    cpu_cores: u32,
) -> NodeReport {
    let revisions = view
        .program(program)
        .iter()
        .map(|r| LoadedRevision {
            revision: r.revision.clone(),
            active: r.active,
            health: r
                .figures
                .as_ref()
                .and_then(|f| samples.sample(node, program, &r.revision, f, at_ns, cpu_cores))
                .map(|mut h| {
                    // Node figures go with the revision the node runs:
                    // every window keeps the node's counters, so one that
                    // turns active has them from its start.
                    if !r.active {
                        h.node = None;
                    }
                    h
                }),
        })
        .collect();
    let figures: Vec<u64> = view
        .program(program)
        .iter()
        .filter_map(|r| r.figures.as_ref().map(|f| f.map_memory_bytes))
        .collect();
    NodeReport {
        node: node.to_string(),
        reachable: true,
        revisions,
        failures: failures.of(node, program),
        kernel: None,
        map_memory_bytes: (!figures.is_empty()).then(|| figures.iter().sum()),
        // The answer's node counters say whether the kernel has BTF, also
        // on a node that holds nothing (it refused `program`); they are
        // on the revisions' figures as well.
        btf: view
            .node
            .as_ref()
            .or_else(|| {
                view.program(program)
                    .iter()
                    .find_map(|r| r.figures.as_ref()?.node.as_ref())
            })
            .and_then(|n| n.btf),
    }
}

/// A node whose agent did not answer (or has no known endpoint).
pub fn unreachable(node: &str) -> NodeReport {
    NodeReport {
        node: node.to_string(),
        reachable: false,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
