//! How a new revision is rolled out: immediately, by canary steps (node
//! percentages, pauses, health analysis) or blue-green, and what happens
//! when it fails. Wire shape only: the rollout machine lives in the operator.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::defaults;

/// How a new revision is rolled out. Exactly one strategy is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.immediate), has(self.canary), has(self.blueGreen)].filter(x, x).size() == 1"
).message("exactly one of immediate, canary or blueGreen must be set"))]
pub struct Strategy {
    /// Every selected node switches as soon as the revision is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub immediate: Option<ImmediateStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStrategy>,
    /// Verify everywhere before switching anywhere: load the new revision,
    /// inactive, on every selected node first (the kernel's verifier runs,
    /// nothing is switched), and start the steps only once every node has
    /// answered. On by default for canary and blueGreen, off for immediate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_first: Option<VerifyFirst>,
}

impl Strategy {
    /// Whether the rollout verifies on every node before any switch:
    /// `verifyFirst.enabled`, else on for canary and blueGreen.
    pub fn verifies_first(&self) -> bool {
        self.verify_first
            .as_ref()
            .and_then(|v| v.enabled)
            .unwrap_or(self.immediate.is_none())
    }
}

/// Load the candidate on every selected node before the first switch.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyFirst {
    /// Unset: on for canary and blueGreen, off for immediate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// What a node that cannot load the revision does to the rollout.
    #[serde(default)]
    pub on_failure: VerifyFailurePolicy,
    /// Nodes loading the revision at once while verifying, per program (at
    /// most 64, the operator's fan-out per reconcile).
    #[serde(default = "defaults::verify_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent: i32,
}

impl Default for VerifyFirst {
    fn default() -> Self {
        VerifyFirst {
            enabled: None,
            on_failure: VerifyFailurePolicy::default(),
            max_concurrent: defaults::verify_concurrency(),
        }
    }
}

/// What a node that cannot load the revision during verification does.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VerifyFailurePolicy {
    /// No node switches: the rollout fails (`failurePolicy` applies) with
    /// the nodes and the reasons in `status.verification`.
    #[default]
    Block,
    /// The node is excluded: it keeps the revision it runs, is reported in
    /// `status.verification` and `failingNodes`, and the rest proceeds.
    Exclude,
}

/// The immediate strategy has no settings: `immediate: {}`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ImmediateStrategy {}

/// Move nodes to the new revision step by step, with health analysis between steps.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStrategy {
    /// Steps run in order. `setNodePercent` values must not decrease.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = kube::core::Rule::new(
        "self.map(s, has(s.setNodePercent), s.setNodePercent).isSorted()"
    ).message("setNodePercent values must not decrease from one step to the next"))]
    pub steps: Vec<CanaryStep>,
    /// How many selected nodes may be switching or failed at once.
    #[serde(default = "defaults::one")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

/// One canary step. Exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.setNodePercent), has(self.pause), has(self.analysis)].filter(x, x).size() == 1"
).message("a step sets exactly one of setNodePercent, pause or analysis"))]
pub struct CanaryStep {
    /// Share of selected nodes that run the new revision after this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub set_node_percent: Option<i32>,
    /// Wait for a duration or, without one, until the rollout is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
    /// Compare canary nodes with stable nodes on the health gates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStep>,
}

/// A pause; without a duration it waits for an explicit promote.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// Go-style duration such as `30s`, `5m` or `1h30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]{1,6}(s|m|h))+$"))]
    pub duration: Option<String>,
}

/// Health analysis over a window, against the gates of the TracerPolicy that
/// targets the program (or the one named here).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.intervalSeconds <= self.durationSeconds")
    .message("intervalSeconds must not exceed durationSeconds"))]
pub struct AnalysisStep {
    /// How long to observe.
    #[serde(default = "defaults::analysis_duration_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub duration_seconds: i32,
    /// How often to sample the agents during the window.
    #[serde(default = "defaults::analysis_interval_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: i32,
    /// A TracerPolicy to take the gates from, instead of the ones that target
    /// this program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<String>,
}

impl Default for AnalysisStep {
    fn default() -> Self {
        Self {
            duration_seconds: defaults::analysis_duration_seconds(),
            interval_seconds: defaults::analysis_interval_seconds(),
            policy_ref: None,
        }
    }
}

/// Load the new revision beside the old one everywhere, then switch all nodes
/// at once; keep the old one loaded for an instant rollback.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStrategy {
    /// Promote by itself once pre-promotion analysis passes (and
    /// `autoPromotionSeconds` has elapsed); otherwise wait for a promote.
    #[serde(default = "defaults::yes")]
    pub auto_promotion_enabled: bool,
    /// Seconds to wait after the preview is loaded before auto promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub auto_promotion_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<AnalysisStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<AnalysisStep>,
    /// Seconds the previous revision stays loaded after promotion.
    #[serde(default = "defaults::keep_previous_seconds")]
    #[schemars(range(min = 0, max = 604800))]
    pub keep_previous_seconds: i32,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Return every node to the stable revision.
    #[default]
    Rollback,
    /// Hold where the rollout is and wait for a person.
    Pause,
}
