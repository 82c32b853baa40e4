//! What this node's kernel supports, probed once at start: each hook
//! kind's program type (libbpf's feature probe), the kprobe and uprobe event
//! sources, BTF targets and a tiny fentry/LSM program load. The result is a
//! pure [`NodeSupport`] table the agent's admission reads.

use std::ffi::CString;

use bpfleet_proto::v1::HookKind;
use libbpf_rs::ProgramType;

use crate::hooks::{ALL_HOOKS, NodeSupport, hook_name};

/// Probes every hook kind against the running kernel.
pub fn node_support() -> NodeSupport {
    NodeSupport::from_reasons(ALL_HOOKS.iter().map(|&h| (h, probe_hook(h).err())))
}

/// The BPF program type a hook needs.
pub(super) fn prog_type_of(h: HookKind) -> Option<ProgramType> {
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
        other => match prog_type_of(other) {
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
    fn this_kernel_has_tracepoints_and_lacks_kprobes() {
        let s = node_support();
        assert!(s.check(HookKind::Tracepoint).is_ok());
        assert!(s.check(HookKind::Xdp).is_ok());
        let e = s.check(HookKind::Kprobe).unwrap_err().to_string();
        assert!(e.contains("unsupported on this node"), "{e}");
        assert!(s.check(HookKind::Fentry).is_err());
        assert!(s.check(HookKind::Lsm).is_err());
    }
}
