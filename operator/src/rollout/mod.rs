//! The rollout state machine: given a TracerProgram's spec, its last status,
//! what every selected node's agent reports, the health gates, the manual
//! requests and the time, compute the next status, the node actions
//! (load, activate, roll back, unload) and the events to emit.
//!
//! Pure and deterministic: no I/O, no clock (`now` comes in and is truncated
//! to whole seconds, the precision of `metav1.Time`), no randomness. The same
//! input gives the same output; feeding the output status back with nothing
//! else changed gives the same status and no events, so a reconciler may call
//! it as often as it likes. Every clock and counter the machine needs is kept
//! in `status.rollout` ([`bpfleet_api::program::RolloutProgress`]), so a
//! restarted operator continues a rollout from status alone.
//!
//! Layout: [`plan`] turns a strategy into steps, [`selection`] picks canary
//! nodes, [`machine`] advances through the steps, [`analysis`] runs the
//! analysis windows, [`nodes`] turns the placement into per-node actions and
//! counts, [`history`] keeps the version registry and [`conditions`] the
//! kstatus conditions; [`teardown()`] unloads everything when the object is
//! deleted.

pub mod analysis;
pub mod clock;
pub mod conditions;
pub mod history;
pub mod machine;
pub mod nodes;
pub mod plan;
pub mod selection;
pub mod teardown;
#[cfg(test)]
pub(crate) mod testing;

use bpfleet_api::TracerProgramSpec;
use bpfleet_api::TracerProgramStatus;
use bpfleet_api::policy::HealthGates;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::gates::HealthSample;

pub use machine::reconcile;
pub use teardown::teardown;

/// Everything the machine looks at.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// `metadata.name` of the TracerProgram (part of the canary hash).
    pub program: &'a str,
    /// `metadata.generation`, copied to `observedGeneration`.
    pub generation: i64,
    pub spec: &'a TracerProgramSpec,
    /// The status as last written (default for a new object).
    pub status: &'a TracerProgramStatus,
    /// The `bpfleet.dev/source-commit` annotation, for the registry.
    pub source_commit: Option<&'a str>,
    /// Every node the selector matches, with what its agent reports.
    pub nodes: &'a [NodeReport],
    /// Nodes outside the selection whose agents still hold the program:
    /// they only ever get `Unload`.
    pub departed: &'a [NodeReport],
    /// Gates of the TracerPolicy that targets the program (defaults when none).
    pub gates: &'a HealthGates,
    pub requests: &'a Requests,
    pub now: Time,
}

/// What one node's agent reports about this program.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeReport {
    pub node: String,
    /// False when the agent did not answer; nothing is sent to it and it
    /// counts as failed (`AgentUnreachable`).
    pub reachable: bool,
    /// Revisions loaded on the node (at most one active).
    pub revisions: Vec<LoadedRevision>,
    /// Load, attach or activation failures, latest per revision.
    pub failures: Vec<NodeFailure>,
    /// The node's kernel release (`status.nodeInfo.kernelVersion`), for
    /// the verification summary.
    pub kernel: Option<String>,
    /// Whether the node's kernel has BTF, as its agent last said (`Stats`
    /// node figures); None when it did not say. For the verification
    /// summary.
    pub btf: Option<bool>,
    /// Map memory the node's agent reports for the program (every revision
    /// it holds); None when it reported no figures. For status.
    pub map_memory_bytes: Option<u64>,
}

impl NodeReport {
    /// A reachable node with nothing loaded.
    pub fn new(node: impl Into<String>) -> Self {
        NodeReport {
            node: node.into(),
            reachable: true,
            ..Default::default()
        }
    }

    /// The active revision, if any.
    pub fn active(&self) -> Option<&str> {
        self.revisions
            .iter()
            .find(|r| r.active)
            .map(|r| r.revision.as_str())
    }

    /// Whether `revision` is loaded (active or not).
    pub fn has(&self, revision: &str) -> bool {
        self.revisions.iter().any(|r| r.revision == revision)
    }

    /// The health sample of `revision`, if it reported one.
    pub fn sample(&self, revision: &str) -> Option<&HealthSample> {
        self.revisions
            .iter()
            .find(|r| r.revision == revision)
            .and_then(|r| r.health.as_ref())
    }

    /// The failure of `revision` on this node, if any: a refusal of the
    /// revision itself. A source the node could not fetch is not one (see
    /// [`NodeReport::unavailable`]).
    pub fn failure(&self, revision: &str) -> Option<&NodeFailure> {
        self.failures
            .iter()
            .find(|f| f.revision == revision && !f.source_unavailable())
    }

    /// The last failure to fetch the source of `revision` on this node
    /// (its registry down or refusing, its pull secret or ConfigMap
    /// missing): the node waits and the load is retried with backoff.
    pub fn unavailable(&self, revision: &str) -> Option<&NodeFailure> {
        self.failures
            .iter()
            .find(|f| f.revision == revision && f.source_unavailable())
    }
}

/// The reason of a failure to fetch a revision's source: a failure of
/// where the bytes live, not of the revision, so it is retried (see
/// [`nodes::retry_delay`]) and only the progress deadline fails a rollout
/// for it.
pub const SOURCE_UNAVAILABLE: &str = "SourceUnavailable";

/// One revision loaded on a node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadedRevision {
    pub revision: String,
    pub active: bool,
    /// Figures over the agent's last sampling interval.
    pub health: Option<HealthSample>,
}

/// A failure an agent reported for a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFailure {
    pub revision: String,
    /// CamelCase, e.g. `VerifierRejected`, `AttachFailed`.
    pub reason: String,
    pub message: String,
    /// When it happened. A failure from before the revision's latest
    /// deployment (`deployedAt` in the registry, moved by a retry) is stale:
    /// the machine ignores it and sends the revision again.
    pub at: Time,
    /// Calls in a row that failed with this reason (1 for the first); a
    /// source-unavailable failure's next retry waits longer each time.
    pub attempts: u32,
}

impl NodeFailure {
    /// A failure to fetch the revision's source ([`SOURCE_UNAVAILABLE`]).
    pub fn source_unavailable(&self) -> bool {
        self.reason == SOURCE_UNAVAILABLE
    }
}

/// Manual control. `pause` is a level (held while true); commands are edges,
/// each carried out once: its id is remembered in
/// `status.rollout.acknowledgedRequests` (the last 16 ids). The reconciler
/// passes the pending request of each kind (e.g. one annotation per kind,
/// its value the id), so a handful at most are ever pending at once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Requests {
    pub pause: bool,
    pub commands: Vec<Command>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Unique per request (e.g. the annotation value or a timestamp).
    pub id: String,
    pub kind: CommandKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// Finish the current pause, analysis, promotion wait or failure hold.
    Promote,
    /// Stop the rollout and return every node to the stable revision.
    Abort,
    /// Roll out again a revision that was aborted, or rerun a held step.
    Retry,
    /// Make a revision of the registry the stable one and return every node
    /// to it; the spec's revision is held until the spec changes or a retry.
    Undo { revision: String },
}

/// What the machine decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub status: TracerProgramStatus,
    /// Per node, in node order; per node in the order to carry them out.
    pub actions: Vec<NodeAction>,
    pub events: Vec<Event>,
    /// Seconds until the machine wants to look again even if nothing
    /// changes (end of a pause, next measurement, deadline, unload of the
    /// retained revision).
    pub requeue_after: Option<i64>,
    /// At most this many nodes acted on at once (verification's
    /// `maxConcurrent`); None: the reconciler's own fan-out.
    pub parallel: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAction {
    pub node: String,
    pub revision: String,
    pub kind: ActionKind,
}

/// Declaration order is execution order on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionKind {
    /// Load and attach, inactive.
    Load,
    /// Switch the node to this revision.
    Activate,
    /// Switch the node back to this (stable) revision.
    Rollback,
    /// Detach and remove the revision's pins.
    Unload,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    /// CamelCase, e.g. `StepAdvanced`, `AnalysisFailed`, `RolledBack`.
    pub reason: String,
    pub message: String,
}
