//! What the operator observed and decided, written only by the operator:
//! phase and conditions, node counts, failing nodes, analysis results, the
//! applied policy, the machine's bookkeeping and the version registry.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What the operator observed and decided. Written only by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TracerProgramStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// One sentence on what is happening or why it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Revision computed from the current spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// Revision every node falls back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// Revision being rolled out, while a rollout is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate_revision: Option<String>,
    /// Index of the canary step in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<i32>,
    /// `index/total` of the canary step, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step: Option<String>,
    /// Share of selected nodes on the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_node_percent: Option<i32>,
    #[serde(default)]
    pub nodes: NodeCounts,
    /// `updated/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_summary: Option<String>,
    /// Nodes that failed, with reasons (at most 20; `nodes.failed` has the count).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["node".into()]))]
    pub failing_nodes: Vec<FailingNode>,
    /// The last health analysis, with measured figures against thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis: Option<AnalysisResult>,
    /// The last verify-everywhere of a rollout (`strategy.verifyFirst`):
    /// counts per kernel release and the nodes that could not load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// The version registry, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 110))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["revision".into()]))]
    pub history: Vec<RevisionRecord>,
    /// `Ready`, `Reconciling`, `Stalled` (kstatus) and `Paused`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The rollout's clocks and counters, so that a restarted operator resumes
    /// exactly where the previous one stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutProgress>,
    /// The TracerPolicy whose `spec.config` applies, and on how many of the
    /// nodes holding the program the agents report it in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<AppliedPolicy>,
    /// Kernel-accounted map memory of the program on its nodes, from the
    /// agents' last figures (every loaded revision's own maps, and the
    /// maps its revisions share once); absent until an agent reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map_memory: Option<MapMemory>,
}

/// The program's map memory across its nodes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MapMemory {
    /// Summed over the nodes that reported.
    pub total_bytes: i64,
    /// The most one node holds.
    pub max_node_bytes: i64,
    /// That node.
    pub max_node: String,
    /// Nodes whose figures are counted.
    pub nodes: i32,
}

/// A TracerPolicy's runtime configuration on the nodes of one program.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPolicy {
    pub name: String,
    /// The policy's `metadata.generation` the figures below are for.
    pub generation: i64,
    /// Nodes holding the program.
    pub nodes: i32,
    /// Of those, nodes whose agent reports this configuration in force.
    pub configured_nodes: i32,
    /// Why some node does not have it, when one refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The policy's alerts that fire on this program's nodes, as their
    /// agents report them (one entry per alert; at most 32).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub firing_alerts: Vec<FiringAlert>,
}

/// Most node names a firing alert lists; `nodes` counts them all.
pub const MAX_FIRING_NODE_NAMES: usize = 10;

/// A TracerPolicy alert firing on some nodes. Bounded whatever the fleet's
/// size: a count and the first node names by name.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FiringAlert {
    /// The alert's `name` in the policy.
    pub alert: String,
    /// `Warning` or `Critical`.
    pub severity: String,
    /// Nodes where it fires.
    pub nodes: i32,
    /// The first of them by name (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub node_names: Vec<String>,
}

/// The candidate loaded, inactive, on every selected node before any switch.
/// Bounded whatever the fleet's size: counts, one line per kernel release
/// (at most 32) and the nodes that failed (at most 20).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub revision: String,
    /// `Verifying`, `Passed`, `Excluded` (passed without the failed nodes)
    /// or `Failed`.
    pub result: String,
    /// Selected nodes.
    pub nodes: i32,
    /// Nodes where the revision loaded (the verifier accepted it).
    pub verified: i32,
    /// Nodes that refused it.
    pub failed: i32,
    /// Nodes not answered yet.
    pub pending: i32,
    /// Per kernel release (`status.nodeInfo.kernelVersion` of the Node;
    /// `unknown` when not reported), most nodes first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub kernels: Vec<KernelVerification>,
    /// Nodes that refused the revision, with the kernel's first error line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub failed_nodes: Vec<NodeVerification>,
}

/// Verification on the nodes of one kernel release.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct KernelVerification {
    pub kernel_release: String,
    pub nodes: i32,
    pub verified: i32,
    pub failed: i32,
    /// The first failed node's first error line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Whether the release's kernels have BTF (`/sys/kernel/btf/vmlinux`),
    /// as the nodes' agents report it: `Present` when every node of the
    /// release that reported it has BTF, `Absent` when none has, `Mixed`
    /// otherwise; unset when no node of the release reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btf: Option<String>,
}

/// One node that could not load the revision.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeVerification {
    pub node: String,
    pub kernel_release: String,
    /// CamelCase, e.g. `VerifierRejected`.
    pub reason: String,
    /// The verifier's error line (or the agent's refusal), one line.
    pub first_error: String,
}

/// Bookkeeping of the rollout state machine. Operator-internal: read it for
/// debugging, never write it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutProgress {
    /// When the current step (canary step or blue-green stage) began, moved
    /// forward by time spent held by `spec.paused` or a pause request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// Last progress (step advanced or more nodes converged), moved forward by
    /// held time; `progressDeadlineSeconds` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_at: Option<Time>,
    /// Since when the rollout is held by `spec.paused` or a pause request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since: Option<Time>,
    /// Measurements taken in the current analysis window.
    #[serde(default)]
    pub measurements: i32,
    /// Failed measurements in a row in the current analysis window.
    #[serde(default)]
    pub consecutive_failures: i32,
    /// Stable error rate (errors / requests) recorded just before a
    /// blue-green switch, the baseline of post-promotion analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_error_rate: Option<f64>,
    /// Stable p99 latency in milliseconds recorded with `baselineErrorRate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_p99_ms: Option<f64>,
    /// Stable BPF run time per run in nanoseconds, recorded with
    /// `baselineErrorRate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_ns_per_run: Option<f64>,
    /// The candidate whose verify-everywhere is done (its steps may run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_revision: Option<String>,
    /// Previous revision kept loaded after a blue-green promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_revision: Option<String>,
    /// When `retainedRevision` is unloaded (`keepPreviousSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_until: Option<Time>,
    /// Ids of the manual requests (promote, abort, retry, undo) already
    /// carried out, newest last, at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub acknowledged_requests: Vec<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepted, nothing loaded yet.
    Pending,
    /// A rollout is moving nodes.
    Progressing,
    /// A rollout waits for a duration, a promote, or `spec.paused`.
    Paused,
    /// Every selected node runs the current revision.
    Healthy,
    /// Some nodes fail to run the stable revision.
    Degraded,
    /// The candidate failed and was rolled back (or held, with `Pause`).
    Aborted,
    /// Being unloaded from every node before deletion.
    Terminating,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeCounts {
    /// Nodes the selector matches.
    pub desired: i32,
    /// Nodes running the current revision.
    pub updated: i32,
    /// Nodes whose agent reports the program healthy.
    pub ready: i32,
    /// Nodes where load, attach or activation failed: of a revision they
    /// should run, or of the spec's revision after its rollout aborted
    /// (those nodes run the stable revision and count as ready too, until
    /// a retry or a new spec). Unreachable agents and nodes that cannot
    /// fetch a source are counted here as well. `failingNodes` lists them.
    pub failed: i32,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailingNode {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// CamelCase reason, e.g. `VerifierRejected`, `AgentUnreachable`.
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisResult {
    pub revision: String,
    pub verdict: AnalysisVerdict,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnalysisVerdict {
    Running,
    Passed,
    Failed,
    Inconclusive,
}

/// One gate as measured: figures are strings so they keep their units.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    pub gate: String,
    pub passed: bool,
    pub measured: String,
    pub threshold: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One entry of the version registry.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    pub revision: String,
    pub version: String,
    /// SHA-256 of the object bytes.
    pub sha256: String,
    /// From the `bpfleet.dev/source-commit` annotation, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_at: Option<Time>,
    pub state: RevisionState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RevisionOutcome>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RevisionState {
    /// Running on nodes (stable, or candidate during a rollout).
    Active,
    /// Loaded nowhere, can be rolled back to.
    Inactive,
    /// Failed or superseded and not to be rolled back to without intent.
    Deprecated,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevisionOutcome {
    InProgress,
    Promoted,
    Aborted,
    RolledBack,
    Superseded,
}
