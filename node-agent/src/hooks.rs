//! Hook kinds as pure tables: their names, how each switches between
//! revisions, which capabilities each needs, the capabilities the agent
//! keeps after setup, and what this node supports ([`NodeSupport`], filled
//! by [`crate::kernel::probe`]). Pure: no kernel call, no file read; the
//! probes and the capability syscalls live in [`crate::kernel`].

use std::collections::BTreeMap;

use bpfleet_proto::v1::{HookKind, HookSupport, SwitchMethod};

use crate::error::{Error, Result};

/// Linux capability numbers the agent checks.
pub mod caps {
    /// CAP_NET_ADMIN
    pub const NET_ADMIN: u32 = 12;
    /// CAP_SYS_ADMIN
    pub const SYS_ADMIN: u32 = 21;
    /// CAP_SYS_RESOURCE
    pub const SYS_RESOURCE: u32 = 24;
    /// CAP_PERFMON
    pub const PERFMON: u32 = 38;
    /// CAP_BPF
    pub const BPF: u32 = 39;

    /// Name of a capability number.
    pub fn name(cap: u32) -> &'static str {
        match cap {
            NET_ADMIN => "CAP_NET_ADMIN",
            SYS_ADMIN => "CAP_SYS_ADMIN",
            SYS_RESOURCE => "CAP_SYS_RESOURCE",
            PERFMON => "CAP_PERFMON",
            BPF => "CAP_BPF",
            _ => "CAP_?",
        }
    }
}

/// Every hook kind the API names, for NodeInfo.
pub const ALL_HOOKS: &[HookKind] = &[
    HookKind::Tracepoint,
    HookKind::RawTracepoint,
    HookKind::Uprobe,
    HookKind::Uretprobe,
    HookKind::Xdp,
    HookKind::TcxIngress,
    HookKind::TcxEgress,
    HookKind::CgroupSkbIngress,
    HookKind::CgroupSkbEgress,
    HookKind::SockOps,
    HookKind::Kprobe,
    HookKind::Kretprobe,
    HookKind::Fentry,
    HookKind::Fexit,
    HookKind::Lsm,
];

/// Short lower-case name of a hook, as used in messages and pin names.
pub fn hook_name(h: HookKind) -> &'static str {
    match h {
        HookKind::Unspecified => "unspecified",
        HookKind::Tracepoint => "tracepoint",
        HookKind::RawTracepoint => "raw_tracepoint",
        HookKind::Uprobe => "uprobe",
        HookKind::Uretprobe => "uretprobe",
        HookKind::Xdp => "xdp",
        HookKind::TcxIngress => "tcx_ingress",
        HookKind::TcxEgress => "tcx_egress",
        HookKind::CgroupSkbIngress => "cgroup_skb_ingress",
        HookKind::CgroupSkbEgress => "cgroup_skb_egress",
        HookKind::SockOps => "sock_ops",
        HookKind::Kprobe => "kprobe",
        HookKind::Kretprobe => "kretprobe",
        HookKind::Fentry => "fentry",
        HookKind::Fexit => "fexit",
        HookKind::Lsm => "lsm",
    }
}

/// Decodes the wire value of a hook, refusing unknown numbers.
pub fn hook_from_i32(v: i32) -> Result<HookKind> {
    match HookKind::try_from(v) {
        Ok(HookKind::Unspecified) => Err(Error::Invalid("entry hook is unspecified".into())),
        Ok(h) => Ok(h),
        Err(_) => Err(Error::Invalid(format!("unknown hook kind {v}"))),
    }
}

/// How the agent switches revisions on a hook.
pub fn switch_method(h: HookKind) -> SwitchMethod {
    match h {
        HookKind::TcxIngress
        | HookKind::TcxEgress
        | HookKind::CgroupSkbIngress
        | HookKind::CgroupSkbEgress
        | HookKind::SockOps => SwitchMethod::LinkUpdate,
        _ => SwitchMethod::Dispatch,
    }
}

/// Capabilities a hook needs (each satisfied by CAP_SYS_ADMIN as well).
pub fn needed_caps(h: HookKind) -> &'static [u32] {
    match h {
        HookKind::Xdp
        | HookKind::TcxIngress
        | HookKind::TcxEgress
        | HookKind::CgroupSkbIngress
        | HookKind::CgroupSkbEgress
        | HookKind::SockOps => &[caps::BPF, caps::NET_ADMIN],
        _ => &[caps::BPF, caps::PERFMON],
    }
}

/// Refuses when a capability the hook needs is missing from `eff` (the
/// effective set, [`crate::kernel::caps::effective`]).
pub fn check_caps(h: HookKind, eff: u64) -> Result<()> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    let missing: Vec<&str> = needed_caps(h)
        .iter()
        .filter(|&&c| !has(c) && !has(caps::SYS_ADMIN))
        .map(|&c| caps::name(c))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Denied(format!(
            "hook {} needs {} which the agent lacks",
            hook_name(h),
            missing.join(", ")
        )))
    }
}

/// Capabilities the agent keeps after setup: enough to load, attach,
/// switch and unpin programs. Mounting bpffs and turning on BPF stats
/// (CAP_SYS_ADMIN) happen before the drop.
pub const KEEP_AFTER_SETUP: &[u32] = &[
    caps::BPF,
    caps::PERFMON,
    caps::NET_ADMIN,
    caps::SYS_RESOURCE,
];

/// Names of the capabilities in a set, among those the agent cares about.
pub fn cap_names(set: u64) -> Vec<&'static str> {
    [
        caps::NET_ADMIN,
        caps::SYS_ADMIN,
        caps::SYS_RESOURCE,
        caps::PERFMON,
        caps::BPF,
    ]
    .into_iter()
    .filter(|&c| set & (1u64 << c) != 0)
    .map(caps::name)
    .collect()
}

/// What this node's kernel offers, probed once at start.
#[derive(Debug, Clone, Default)]
pub struct NodeSupport {
    reasons: BTreeMap<i32, Option<String>>,
}

impl NodeSupport {
    /// Support as probed: for each hook kind, `None` when the kernel has
    /// it, else why not ([`crate::kernel::probe::node_support`] probes).
    pub fn from_reasons(reasons: impl IntoIterator<Item = (HookKind, Option<String>)>) -> Self {
        Self {
            reasons: reasons.into_iter().map(|(h, r)| (h as i32, r)).collect(),
        }
    }

    /// Ok when the kernel has the hook, else the reason it has not.
    pub fn check(&self, h: HookKind) -> Result<()> {
        match self.reasons.get(&(h as i32)) {
            Some(None) => Ok(()),
            Some(Some(why)) => Err(Error::Precondition(format!(
                "hook {} is unsupported on this node: {why}",
                hook_name(h)
            ))),
            None => Err(Error::Invalid(format!("unknown hook {}", h as i32))),
        }
    }

    /// NodeInfo rows.
    pub fn rows(&self) -> Vec<HookSupport> {
        self.reasons
            .iter()
            .map(|(&h, why)| HookSupport {
                hook: h,
                supported: why.is_none(),
                reason: why.clone().unwrap_or_default(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcx_and_cgroup_hooks_switch_by_link_update_others_by_dispatch() {
        assert_eq!(switch_method(HookKind::Xdp), SwitchMethod::Dispatch);
        assert_eq!(switch_method(HookKind::TcxEgress), SwitchMethod::LinkUpdate);
        assert_eq!(switch_method(HookKind::Tracepoint), SwitchMethod::Dispatch);
        assert_eq!(switch_method(HookKind::Uprobe), SwitchMethod::Dispatch);
    }

    #[test]
    fn unknown_and_unspecified_hooks_are_invalid() {
        assert!(matches!(hook_from_i32(0), Err(Error::Invalid(_))));
        assert!(matches!(hook_from_i32(999), Err(Error::Invalid(_))));
        assert_eq!(hook_from_i32(5).ok(), Some(HookKind::Xdp));
    }

    #[test]
    fn capabilities_are_checked_against_the_given_set() {
        let set = |cs: &[u32]| cs.iter().fold(0u64, |m, &c| m | (1 << c));
        assert!(check_caps(HookKind::Tracepoint, set(&[caps::BPF, caps::PERFMON])).is_ok());
        let e = check_caps(HookKind::Xdp, set(&[caps::BPF])).unwrap_err();
        assert!(
            matches!(e, Error::Denied(ref m) if m.contains("CAP_NET_ADMIN")),
            "{e}"
        );
        assert!(check_caps(HookKind::Xdp, set(&[caps::SYS_ADMIN])).is_ok());
        assert_eq!(
            cap_names(set(&[caps::BPF, caps::NET_ADMIN])),
            ["CAP_NET_ADMIN", "CAP_BPF"]
        );
    }

    #[test]
    fn node_support_says_why_a_hook_is_missing() {
        let s = NodeSupport::from_reasons([
            (HookKind::Tracepoint, None),
            (HookKind::Kprobe, Some("no kprobes".to_string())),
        ]);
        assert!(s.check(HookKind::Tracepoint).is_ok());
        let e = s.check(HookKind::Kprobe).unwrap_err().to_string();
        assert!(
            e.contains("kprobe is unsupported on this node: no kprobes"),
            "{e}"
        );
        assert!(matches!(s.check(HookKind::Lsm), Err(Error::Invalid(_))));
        assert_eq!(s.rows().len(), 2);
    }
}
