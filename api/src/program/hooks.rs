//! The BPF programs of an object and where each attaches: [`HookType`], the
//! [`ProgramEntry`] that names one hook and carries its settings, and the
//! settings of every hook. Wire shape only: which hooks a kernel supports
//! and how the agent switches revisions on them is the agent's business.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::schema;

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

impl ProgramEntry {
    /// An entry for the BPF program `name` on `hook`, with no hook settings
    /// yet: set the field [`HookType::member`] names (for instance with
    /// [`ProgramEntry::tracepoint`]) before it is valid.
    pub fn new(name: impl Into<String>, hook: HookType) -> Self {
        ProgramEntry {
            name: name.into(),
            hook,
            tracepoint: None,
            raw_tracepoint: None,
            uprobe: None,
            kprobe: None,
            fentry: None,
            fexit: None,
            xdp: None,
            tc: None,
            tcx: None,
            cgroup_skb: None,
            sock_ops: None,
        }
    }

    /// A `Tracepoint` entry on `category/name`, complete.
    pub fn tracepoint(
        name: impl Into<String>,
        category: impl Into<String>,
        tracepoint: impl Into<String>,
    ) -> Self {
        ProgramEntry {
            tracepoint: Some(TracepointHook {
                category: category.into(),
                name: tracepoint.into(),
            }),
            ..ProgramEntry::new(name, HookType::Tracepoint)
        }
    }
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

    #[test]
    fn constructors_set_only_the_named_hook() {
        let e = ProgramEntry::tracepoint("count", "syscalls", "sys_enter_write");
        let json = serde_json::to_value(&e).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "name": "count",
                "type": "Tracepoint",
                "tracepoint": {"category": "syscalls", "name": "sys_enter_write"},
            })
        );
        let bare = ProgramEntry::new("x", HookType::Xdp);
        let json = serde_json::to_value(&bare).expect("serializes");
        assert_eq!(json, serde_json::json!({"name": "x", "type": "XDP"}));
    }
}
