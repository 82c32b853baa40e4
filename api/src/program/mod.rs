//! `TracerProgram`: what code runs on which nodes, and how a new revision of it
//! is rolled out.
//!
//! The spec is only ever written by users (or GitOps); everything the operator
//! learns or decides lives in [`TracerProgramStatus`], so a restarted operator
//! resumes a rollout from status alone and Git never sees drift.
//!
//! One file per concept: this one holds the spec itself; [`source`] where the
//! bytecode comes from, [`hooks`] the program entries and their attach
//! points, [`strategy`] how a revision is rolled out, [`status`] what the
//! operator reports. Field order and doc comments are the generated CRD's
//! (schemars keeps them), so moving a type between these files changes
//! nothing in `crds/`; `crdgen --check` says so.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

mod hooks;
mod source;
mod status;
mod strategy;

pub use hooks::*;
pub use source::*;
pub use status::*;
pub use strategy::*;

/// Desired state of a managed eBPF program.
///
/// The revision that nodes run is derived from the fields that change what is
/// loaded (bytecode, digest, programs, persistent maps); editing only the
/// strategy or the selector does not start a new rollout.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bpfleet.dev",
    version = "v1alpha1",
    kind = "TracerProgram",
    doc = "An eBPF program managed by bpfleet: its bytecode, hooks, target nodes and rollout strategy.",
    plural = "tracerprograms",
    singular = "tracerprogram",
    shortname = "tp",
    category = "bpfleet",
    status = "TracerProgramStatus",
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Revision","type":"string","jsonPath":".status.currentRevision"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.stableRevision"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.currentStep"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","description":"nodes on the current revision / nodes selected","jsonPath":".status.nodeSummary"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.recreateIncompatibleMaps) || self.recreateIncompatibleMaps.all(m, has(self.persistentMaps) && m in self.persistentMaps)"
).message("every map in recreateIncompatibleMaps must also be in persistentMaps"))]
pub struct TracerProgramSpec {
    /// Human version label of the bytecode (e.g. `1.4.2`), shown by `kubectl get`.
    /// Free text; the revision id is computed from the content, not from this.
    #[schemars(length(min = 1, max = 63))]
    pub version: String,

    /// Where the BPF object file comes from. Exactly one source is set.
    pub bytecode: BytecodeSource,

    /// Lower-case hex SHA-256 of the BPF object bytes. Agents refuse to load
    /// bytes whose digest differs.
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: String,

    /// Optional detached signature of the object bytes, as made by
    /// `cosign sign-blob --key` (ECDSA P-256 over SHA-256). Agents configured to
    /// require signatures refuse unsigned or badly signed objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<BytecodeSignature>,

    /// The BPF programs inside the object to load and where to attach each.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["name".into()]))]
    pub programs: Vec<ProgramEntry>,

    /// Names of maps in the object whose contents must survive a switch
    /// between revisions (counters, connection state). A new revision reuses
    /// the pinned map; one whose definition differs is refused on the node
    /// (FailedPrecondition, the rollout fails as for a verifier rejection):
    /// map type, key or value size, max entries, or, when both have BTF,
    /// the shape of key or value (a field added, removed, moved, resized
    /// or retyped, even at the same size), each difference listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(inner(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub persistent_maps: Vec<String>,

    /// Persistent maps (each also named in `persistentMaps`) whose layout a
    /// new revision may change on purpose (`onIncompatible: Recreate`): a
    /// revision whose map differs from the pinned one gets a fresh, empty
    /// map instead of being refused, and the revisions still loaded on the
    /// node keep the old map with its contents, so a rollback finds it.
    /// Maps not named here are refused when they differ (`Refuse`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(inner(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub recreate_incompatible_maps: Vec<String>,

    /// Which nodes run the program. Empty selects every node. Nodes that stop
    /// matching (relabelled or selector changed) have the program unloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// How a new revision reaches the selected nodes.
    pub strategy: Strategy,

    /// Seconds a rollout may go without progress before it is marked Stalled
    /// and the failure policy applies. Time spent paused does not count.
    #[serde(default = "defaults::progress_deadline_seconds")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: i32,

    /// What to do when a health gate fails or the deadline passes.
    #[serde(default)]
    pub failure_policy: FailurePolicy,

    /// How many revisions the version registry keeps (the active ones are
    /// always kept).
    #[serde(default = "defaults::revision_history_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub revision_history_limit: i32,

    /// Holds the rollout where it is. Nodes keep what they run.
    #[serde(default)]
    pub paused: bool,
}

mod defaults {
    pub fn progress_deadline_seconds() -> i32 {
        600
    }
    pub fn revision_history_limit() -> i32 {
        10
    }
    pub fn analysis_duration_seconds() -> i32 {
        60
    }
    pub fn analysis_interval_seconds() -> i32 {
        10
    }
    pub fn keep_previous_seconds() -> i32 {
        300
    }
    pub fn one() -> i32 {
        1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn verify_concurrency() -> i32 {
        64
    }
}

/// Annotation that carries the Git commit the spec came from (set by GitOps
/// tooling or CI); copied into the version registry.
pub const SOURCE_COMMIT_ANNOTATION: &str = "bpfleet.dev/source-commit";

impl TracerProgramSpec {
    /// Node selector labels in `matchLabels` form, for callers that only
    /// support equality selectors.
    pub fn match_labels(&self) -> BTreeMap<String, String> {
        self.node_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod persistent_map_tests {
    // Test code: a failed parse panics, which is the report.
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const BASE: &str = "version: 1.0.0\nbytecode: {file: {path: /x.o}}\nsha256: 0000000000000000000000000000000000000000000000000000000000000000\nprograms: [{name: p, type: Tracepoint, tracepoint: {category: a, name: b}}]\nstrategy: {immediate: {}}\n";

    fn parse(extra: &str) -> TracerProgramSpec {
        serde_yaml::from_str(&format!("{BASE}{extra}")).expect("spec parses")
    }

    #[test]
    fn plain_persistent_maps_still_mean_refuse() {
        let s = parse("persistentMaps: [counts]\n");
        assert_eq!(s.persistent_maps, ["counts"]);
        assert!(s.recreate_incompatible_maps.is_empty());
        // Serialized back without the new field: old YAML round-trips.
        let back = serde_json::to_value(&s).unwrap();
        assert!(back.get("recreateIncompatibleMaps").is_none(), "{back}");
    }

    #[test]
    fn recreate_is_a_sibling_list_of_map_names() {
        let s = parse("persistentMaps: [counts, seen]\nrecreateIncompatibleMaps: [counts]\n");
        assert_eq!(s.recreate_incompatible_maps, ["counts"]);
        let back = serde_json::to_value(&s).unwrap();
        assert_eq!(
            back["recreateIncompatibleMaps"],
            serde_json::json!(["counts"])
        );
    }

    #[test]
    fn crd_schema_lists_the_field_as_a_set_checked_against_persistent_maps() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(TracerProgram::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let f = &spec["properties"]["recreateIncompatibleMaps"];
        assert_eq!(f["type"], "array");
        assert_eq!(f["items"]["type"], "string");
        assert_eq!(f["x-kubernetes-list-type"], "set");
        let rules = spec["x-kubernetes-validations"].to_string();
        assert!(rules.contains("m in self.persistentMaps"), "{rules}");
    }
}
