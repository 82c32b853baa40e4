//! `TracerProgram`: what code runs on which nodes, and how a new revision of it
//! is rolled out.
//!
//! The spec is only ever written by users (or GitOps); everything the operator
//! learns or decides lives in [`TracerProgramStatus`], so a restarted operator
//! resumes a rollout from status alone and Git never sees drift.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema;

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
    /// the pinned map; one whose definition differs is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(inner(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")))]
    #[x_kube(merge_strategy = kube::core::ListMerge::Set)]
    pub persistent_maps: Vec<String>,

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
}

/// Where the object file comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.image), has(self.file), has(self.inline), has(self.configMap)].filter(x, x).size() == 1"
).message("exactly one of image, file, inline or configMap must be set"))]
pub struct BytecodeSource {
    /// OCI artifact holding the object, pinned by digest
    /// (`registry/repo@sha256:<64 hex>`); tags alone are refused because they move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSource>,
    /// Absolute path of the object on every selected node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
    /// The object itself, base64 encoded; for small programs (≤ 768 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 4, max = 1048576))]
    #[schemars(regex(pattern = r"^[A-Za-z0-9+/]+={0,2}$"))]
    pub inline: Option<String>,
    /// A key of a ConfigMap holding the object in `binaryData`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
}

/// A digest-pinned OCI reference.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSource {
    /// `registry/repository@sha256:<64 hex>`; a tag may precede the digest.
    #[schemars(regex(
        pattern = r"^[a-z0-9]+([._:/-][a-zA-Z0-9]+)*(:[\w][\w.-]{0,127})?@sha256:[a-f0-9]{64}$"
    ))]
    #[schemars(length(max = 512))]
    pub reference: String,
    /// Secret (in the operator's namespace) with registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
}

/// An object file that already exists on the nodes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileSource {
    /// Absolute path, e.g. `/var/lib/bpfleet/objects/http.bpf.o`.
    #[schemars(regex(pattern = r"^/[^\x00]*$"))]
    #[schemars(length(max = 4096))]
    pub path: String,
}

/// A ConfigMap key holding the object.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A detached signature over the object bytes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BytecodeSignature {
    /// Base64 signature as printed by `cosign sign-blob`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9+/]+={0,2}$"))]
    #[schemars(length(min = 16, max = 1024))]
    pub value: String,
    /// Which of the agents' trusted public keys should verify it; all are
    /// tried when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// The kind of kernel hook a program attaches to.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookType {
    Tracepoint,
    RawTracepoint,
    Uprobe,
    Kprobe,
    Fentry,
    Fexit,
    #[serde(rename = "XDP")]
    Xdp,
    #[serde(rename = "TC")]
    Tc,
    #[serde(rename = "TCX")]
    Tcx,
    #[serde(rename = "CgroupSKB")]
    CgroupSkb,
    SockOps,
}

impl HookType {
    /// Every hook type, in declaration order.
    pub const ALL: [HookType; 11] = [
        HookType::Tracepoint,
        HookType::RawTracepoint,
        HookType::Uprobe,
        HookType::Kprobe,
        HookType::Fentry,
        HookType::Fexit,
        HookType::Xdp,
        HookType::Tc,
        HookType::Tcx,
        HookType::CgroupSkb,
        HookType::SockOps,
    ];

    /// The serialized name, as users write it in `type:`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookType::Tracepoint => "Tracepoint",
            HookType::RawTracepoint => "RawTracepoint",
            HookType::Uprobe => "Uprobe",
            HookType::Kprobe => "Kprobe",
            HookType::Fentry => "Fentry",
            HookType::Fexit => "Fexit",
            HookType::Xdp => "XDP",
            HookType::Tc => "TC",
            HookType::Tcx => "TCX",
            HookType::CgroupSkb => "CgroupSKB",
            HookType::SockOps => "SockOps",
        }
    }

    /// The name of the [`ProgramEntry`] field that carries this hook's settings.
    pub fn member(self) -> &'static str {
        match self {
            HookType::Tracepoint => "tracepoint",
            HookType::RawTracepoint => "rawTracepoint",
            HookType::Uprobe => "uprobe",
            HookType::Kprobe => "kprobe",
            HookType::Fentry => "fentry",
            HookType::Fexit => "fexit",
            HookType::Xdp => "xdp",
            HookType::Tc => "tc",
            HookType::Tcx => "tcx",
            HookType::CgroupSkb => "cgroupSkb",
            HookType::SockOps => "sockOps",
        }
    }

    /// Whether the agent switches revisions on this hook with an atomic
    /// link update (`bpf_link_update`); the others switch through the
    /// agent's dispatcher (a one-slot program array the hook tail-calls
    /// through). XDP has a link update, but every XDP program change costs
    /// the kernel milliseconds, so XDP goes through the dispatcher too.
    pub fn switches_by_link_update(self) -> bool {
        matches!(
            self,
            HookType::Tcx | HookType::CgroupSkb | HookType::SockOps
        )
    }
}

/// One BPF program of the object and where it attaches.
///
/// `type` names the hook; the field of the same name (`tracepoint`, `xdp`, ...)
/// holds its settings, and no other hook field may be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = schema::member_rule(HookType::Tracepoint))]
#[x_kube(validation = schema::member_rule(HookType::RawTracepoint))]
#[x_kube(validation = schema::member_rule(HookType::Uprobe))]
#[x_kube(validation = schema::member_rule(HookType::Kprobe))]
#[x_kube(validation = schema::member_rule(HookType::Fentry))]
#[x_kube(validation = schema::member_rule(HookType::Fexit))]
#[x_kube(validation = schema::member_rule(HookType::Xdp))]
#[x_kube(validation = schema::member_rule(HookType::Tc))]
#[x_kube(validation = schema::member_rule(HookType::Tcx))]
#[x_kube(validation = schema::member_rule(HookType::CgroupSkb))]
#[x_kube(validation = schema::member_rule(HookType::SockOps))]
pub struct ProgramEntry {
    /// Name of the program (the C function) inside the object.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"))]
    pub name: String,
    /// The hook the program attaches to.
    #[serde(rename = "type")]
    pub hook: HookType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracepoint: Option<TracepointHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_tracepoint: Option<RawTracepointHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uprobe: Option<UprobeHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kprobe: Option<KprobeHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fentry: Option<FunctionHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fexit: Option<FunctionHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tc: Option<TcHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcx: Option<TcHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_skb: Option<CgroupSkbHook>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sock_ops: Option<CgroupHook>,
}

/// `tracepoint/<category>/<name>`, e.g. `syscalls/sys_enter_write`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TracepointHook {
    #[schemars(regex(pattern = r"^[a-z0-9_]{1,64}$"))]
    pub category: String,
    #[schemars(regex(pattern = r"^[a-z0-9_]{1,128}$"))]
    pub name: String,
}

/// A raw tracepoint by name, e.g. `sys_enter`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RawTracepointHook {
    #[schemars(regex(pattern = r"^[a-z0-9_]{1,128}$"))]
    pub name: String,
}

/// A user-space probe on a function or offset in a binary or library.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.function) || has(self.offset)")
    .message("uprobe needs a function or an offset"))]
pub struct UprobeHook {
    /// Path of the binary or library (e.g. `/usr/lib/x86_64-linux-gnu/libssl.so.3`),
    /// or a library name resolved on the node.
    #[schemars(length(min = 1, max = 4096))]
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub function: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub offset: Option<i64>,
    /// Attach on return instead of entry.
    #[serde(default)]
    pub retprobe: bool,
    /// Only this process; every process mapping the target when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pid: Option<i32>,
}

/// A kernel probe (only on kernels with kprobe events; agents report it
/// unsupported elsewhere).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KprobeHook {
    #[schemars(length(min = 1, max = 256))]
    pub function: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub offset: Option<i64>,
    #[serde(default)]
    pub retprobe: bool,
}

/// fentry / fexit on a kernel function (needs BPF trampolines).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FunctionHook {
    #[schemars(length(min = 1, max = 256))]
    pub function: String,
}

/// XDP on network interfaces.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct XdpHook {
    /// Interface names on the node.
    #[schemars(length(min = 1, max = 64))]
    #[schemars(inner(regex(pattern = r"^[^/\s:]{1,15}$")))]
    pub interfaces: Vec<String>,
    #[serde(default)]
    pub mode: XdpMode,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Native where the driver supports it, generic otherwise.
    #[default]
    Auto,
    Native,
    Generic,
}

/// tc (classic clsact) or tcx on network interfaces.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TcHook {
    #[schemars(length(min = 1, max = 64))]
    #[schemars(inner(regex(pattern = r"^[^/\s:]{1,15}$")))]
    pub interfaces: Vec<String>,
    pub direction: Direction,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// cgroup_skb on a cgroup v2 directory.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CgroupSkbHook {
    /// Absolute cgroup v2 path, e.g. `/sys/fs/cgroup/kubepods.slice`.
    #[schemars(regex(pattern = r"^/[^\x00]*$"))]
    pub cgroup_path: String,
    pub direction: Direction,
}

/// A cgroup-attached program without direction (sock_ops).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CgroupHook {
    #[schemars(regex(pattern = r"^/[^\x00]*$"))]
    pub cgroup_path: String,
}

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
    /// Nodes where load, attach or activation failed.
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
mod tests {
    use super::*;

    /// `as_str` and `member` are used to build CEL rules and error messages;
    /// they must agree with what serde actually reads and writes.
    #[test]
    fn hook_names_match_serde() {
        for hook in HookType::ALL {
            let json = serde_json::to_value(hook).expect("serializes");
            assert_eq!(json, serde_json::Value::String(hook.as_str().into()));
        }
        let tp = TracepointHook {
            category: "c".into(),
            name: "n".into(),
        };
        let tc = TcHook {
            interfaces: vec!["eth0".into()],
            direction: Direction::Ingress,
        };
        let cg = CgroupHook {
            cgroup_path: "/sys/fs/cgroup".into(),
        };
        let f = FunctionHook {
            function: "f".into(),
        };
        let entry = ProgramEntry {
            name: "p".into(),
            hook: HookType::Tracepoint,
            tracepoint: Some(tp),
            raw_tracepoint: Some(RawTracepointHook { name: "n".into() }),
            uprobe: Some(UprobeHook {
                target: "/bin/true".into(),
                function: Some("main".into()),
                offset: None,
                retprobe: false,
                pid: None,
            }),
            kprobe: Some(KprobeHook {
                function: "f".into(),
                offset: None,
                retprobe: false,
            }),
            fentry: Some(f.clone()),
            fexit: Some(f),
            xdp: Some(XdpHook {
                interfaces: vec!["eth0".into()],
                mode: XdpMode::Auto,
            }),
            tc: Some(tc.clone()),
            tcx: Some(tc),
            cgroup_skb: Some(CgroupSkbHook {
                cgroup_path: "/sys/fs/cgroup".into(),
                direction: Direction::Egress,
            }),
            sock_ops: Some(cg),
        };
        let json = serde_json::to_value(&entry).expect("serializes");
        let keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "name" && *k != "type")
            .collect();
        let mut members: Vec<&str> = HookType::ALL.iter().map(|h| h.member()).collect();
        let mut keys = keys;
        keys.sort_unstable();
        members.sort_unstable();
        assert_eq!(keys, members);
    }
}
