//! Hook kinds: how each attaches, how it switches between revisions, which
//! capabilities it needs, and whether this node's kernel has it at all.

use std::collections::BTreeMap;
use std::ffi::CString;

use bpfleet_proto::v1::{HookKind, HookSupport, SwitchMethod};
use libbpf_rs::ProgramType;

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

/// The BPF program type a hook needs.
pub fn expected_prog_type(h: HookKind) -> Option<ProgramType> {
    Some(match h {
        HookKind::Tracepoint => ProgramType::Tracepoint,
        HookKind::RawTracepoint => ProgramType::RawTracepoint,
        HookKind::Uprobe | HookKind::Uretprobe | HookKind::Kprobe | HookKind::Kretprobe => {
            ProgramType::Kprobe
        }
        HookKind::Xdp => ProgramType::Xdp,
        HookKind::TcxIngress | HookKind::TcxEgress => ProgramType::SchedCls,
        HookKind::CgroupSkbIngress | HookKind::CgroupSkbEgress => ProgramType::CgroupSkb,
        HookKind::SockOps => ProgramType::SockOps,
        HookKind::Fentry | HookKind::Fexit => ProgramType::Tracing,
        HookKind::Lsm => ProgramType::Lsm,
        HookKind::Unspecified => return None,
    })
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

/// Effective capability set of this process.
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Refuses when a capability the hook needs is missing.
pub fn check_caps(h: HookKind) -> Result<()> {
    let eff = effective_caps();
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

/// Reduces the calling thread's effective and permitted capabilities to
/// `keep` (those it holds) and clears the inheritable set. Threads created
/// afterwards inherit the reduced set, so call it before starting any.
/// Returns the new effective set.
pub fn drop_capabilities(keep: &[u32]) -> Result<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let held = effective_caps();
    let mask = keep.iter().fold(0u64, |m, &c| m | (1u64 << c)) & held;
    let data = [
        Data {
            effective: mask as u32,
            permitted: mask as u32,
            inheritable: 0,
        },
        Data {
            effective: (mask >> 32) as u32,
            permitted: (mask >> 32) as u32,
            inheritable: 0,
        },
    ];
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads a valid header and two data records we own.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()) };
    if rc != 0 {
        return Err(Error::io(
            "dropping capabilities",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(effective_caps())
}

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
    /// Probes every hook kind against the running kernel.
    pub fn probe() -> Self {
        let mut reasons = BTreeMap::new();
        for &h in ALL_HOOKS {
            reasons.insert(h as i32, probe_hook(h).err());
        }
        Self { reasons }
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

fn prog_type_supported(t: ProgramType) -> Result<(), String> {
    match t.is_supported() {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("the kernel does not load {t:?} programs")),
        Err(e) => Err(format!("probing {t:?} programs failed: {e}")),
    }
}

fn probe_hook(h: HookKind) -> Result<(), String> {
    match h {
        HookKind::Kprobe | HookKind::Kretprobe => {
            if !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
                return Err("the kernel has no kprobe event source \
                     (/sys/bus/event_source/devices/kprobe is missing)"
                    .into());
            }
            prog_type_supported(ProgramType::Kprobe)
        }
        HookKind::Uprobe | HookKind::Uretprobe => {
            if !std::path::Path::new("/sys/bus/event_source/devices/uprobe").exists() {
                return Err("the kernel has no uprobe event source".into());
            }
            prog_type_supported(ProgramType::Kprobe)
        }
        HookKind::Fentry | HookKind::Fexit => probe_tracing(libbpf_sys::BPF_TRACE_FENTRY, h),
        HookKind::Lsm => {
            let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
            if !lsms.split(',').any(|l| l.trim() == "bpf") {
                return Err(format!(
                    "BPF LSM is not enabled (active LSMs: {})",
                    if lsms.is_empty() {
                        "unknown"
                    } else {
                        lsms.trim()
                    }
                ));
            }
            probe_tracing(libbpf_sys::BPF_LSM_MAC, h)
        }
        other => match expected_prog_type(other) {
            Some(t) => prog_type_supported(t),
            None => Err("unspecified hook".into()),
        },
    }
}

/// Loads a two-instruction fentry/LSM program to see whether the kernel
/// accepts tracing programs at all (it refuses them where ftrace is locked).
fn probe_tracing(attach_type: libbpf_sys::bpf_attach_type, h: HookKind) -> Result<(), String> {
    let func = if attach_type == libbpf_sys::BPF_LSM_MAC {
        "bpf_lsm_file_open"
    } else {
        "do_sys_openat2"
    };
    let cfunc = CString::new(func).map_err(|e| e.to_string())?;
    // SAFETY: cfunc is a valid NUL-terminated string for the duration of the call.
    let btf_id = unsafe { libbpf_sys::libbpf_find_vmlinux_btf_id(cfunc.as_ptr(), attach_type) };
    if btf_id < 0 {
        return Err(format!(
            "kernel BTF has no {func} to attach a {} probe to",
            hook_name(h)
        ));
    }
    // r0 = 0; exit
    let insns = [
        libbpf_sys::bpf_insn {
            code: 0xb7,
            _bitfield_align_1: [],
            _bitfield_1: libbpf_sys::bpf_insn::new_bitfield_1(0, 0),
            off: 0,
            imm: 0,
        },
        libbpf_sys::bpf_insn {
            code: 0x95,
            _bitfield_align_1: [],
            _bitfield_1: libbpf_sys::bpf_insn::new_bitfield_1(0, 0),
            off: 0,
            imm: 0,
        },
    ];
    let opts = libbpf_sys::bpf_prog_load_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_prog_load_opts>() as _,
        expected_attach_type: attach_type,
        attach_btf_id: btf_id as u32,
        ..Default::default()
    };
    let name = c"bpfleet_probe";
    let license = c"GPL";
    let prog_type = if attach_type == libbpf_sys::BPF_LSM_MAC {
        libbpf_sys::BPF_PROG_TYPE_LSM
    } else {
        libbpf_sys::BPF_PROG_TYPE_TRACING
    };
    let mut opts = opts;
    // SAFETY: every pointer refers to a live local; libbpf copies what it needs.
    let fd = unsafe {
        libbpf_sys::bpf_prog_load(
            prog_type,
            name.as_ptr(),
            license.as_ptr(),
            insns.as_ptr(),
            insns.len() as _,
            &mut opts,
        )
    };
    if fd < 0 {
        let err = std::io::Error::from_raw_os_error(-fd);
        let hint = if -fd == libc::EPERM {
            " (ftrace is locked down on this kernel)"
        } else {
            ""
        };
        return Err(format!(
            "the kernel refuses {} programs: {err}{hint}",
            hook_name(h)
        ));
    }
    // SAFETY: fd was just returned by the kernel and is owned by nobody else.
    unsafe { libc::close(fd) };
    Ok(())
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
    fn this_kernel_has_tracepoints_and_lacks_kprobes() {
        let s = NodeSupport::probe();
        assert!(s.check(HookKind::Tracepoint).is_ok());
        assert!(s.check(HookKind::Xdp).is_ok());
        let e = s.check(HookKind::Kprobe).unwrap_err().to_string();
        assert!(e.contains("unsupported on this node"), "{e}");
        assert!(s.check(HookKind::Fentry).is_err());
        assert!(s.check(HookKind::Lsm).is_err());
    }
}
