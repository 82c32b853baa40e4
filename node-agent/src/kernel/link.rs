//! Switchable links: hooks that have `bpf_link` objects (tcx, cgroup
//! skb, sock_ops) switch revisions by replacing a link's program in one
//! `bpf_link_update`. Owns creating, pinning, updating and reading links.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use bpfleet_proto::v1::HookKind;

use super::layout::hook_of;
use super::obj_pin;
use super::sys::ifindex;
use crate::error::{Error, Result};
use crate::hooks::hook_name;
use crate::state::EntryState;

/// Creates a link of a switchable hook for a pinned program and pins it.
pub fn create_shared_link(prog_fd: BorrowedFd<'_>, e: &EntryState, pin: &Path) -> Result<OwnedFd> {
    let hook = hook_of(e);
    let (target_fd, _target_owner, attach) = match hook {
        HookKind::Xdp | HookKind::TcxIngress | HookKind::TcxEgress => {
            let idx = ifindex(&e.target)?;
            let attach = match hook {
                HookKind::Xdp => libbpf_sys::BPF_XDP,
                HookKind::TcxIngress => libbpf_sys::BPF_TCX_INGRESS,
                _ => libbpf_sys::BPF_TCX_EGRESS,
            };
            (idx, None, attach)
        }
        HookKind::CgroupSkbIngress | HookKind::CgroupSkbEgress | HookKind::SockOps => {
            let dir = std::fs::File::open(&e.target)
                .map_err(|er| Error::io(format!("opening cgroup {}", e.target), er))?;
            let attach = match hook {
                HookKind::CgroupSkbIngress => libbpf_sys::BPF_CGROUP_INET_INGRESS,
                HookKind::CgroupSkbEgress => libbpf_sys::BPF_CGROUP_INET_EGRESS,
                _ => libbpf_sys::BPF_CGROUP_SOCK_OPS,
            };
            (dir.as_raw_fd(), Some(dir), attach)
        }
        other => {
            return Err(Error::Precondition(format!(
                "hook {} has no updatable link",
                hook_name(other)
            )));
        }
    };
    // SAFETY: both fds are open for the duration of the call; opts may be NULL.
    let fd = unsafe {
        libbpf_sys::bpf_link_create(prog_fd.as_raw_fd(), target_fd, attach, std::ptr::null())
    };
    if fd < 0 {
        return Err(Error::kernel(
            format!(
                "attaching {} to {} {}",
                e.bpf_program,
                hook_name(hook),
                e.target
            ),
            libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-fd)),
        ));
    }
    // SAFETY: the kernel just returned this fd; nobody else owns it.
    let link = unsafe { OwnedFd::from_raw_fd(fd) };
    obj_pin(link.as_fd(), pin)?;
    Ok(link)
}

/// Atomically replaces the program of a link, failing unless it currently
/// runs `old_prog`.
pub fn link_update(
    link: BorrowedFd<'_>,
    new_prog: BorrowedFd<'_>,
    old_prog: Option<BorrowedFd<'_>>,
) -> Result<()> {
    let opts = libbpf_sys::bpf_link_update_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_link_update_opts>() as _,
        flags: if old_prog.is_some() {
            libbpf_sys::BPF_F_REPLACE
        } else {
            0
        },
        old_prog_fd: old_prog.map_or(0, |f| f.as_raw_fd() as u32),
        ..Default::default()
    };
    // SAFETY: fds are borrowed and open; opts lives for the call.
    let rc = unsafe { libbpf_sys::bpf_link_update(link.as_raw_fd(), new_prog.as_raw_fd(), &opts) };
    if rc < 0 {
        return Err(Error::kernel(
            "bpf_link_update",
            libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-rc)),
        ));
    }
    Ok(())
}

/// (link id, id of the program it runs).
pub fn link_ids(fd: BorrowedFd<'_>) -> Result<(u32, u32)> {
    let info = libbpf_rs::query::LinkInfo::from_fd(fd)
        .map_err(|e| Error::kernel("reading link info", e))?;
    Ok((info.id, info.prog_id))
}
