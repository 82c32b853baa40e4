//! Dispatchers: one small program per hook that reads its one-slot
//! program array and tail-calls the revision in it, so a switch is one map
//! write. Owns loading, pinning and attaching a dispatcher, the check that a
//! revision can run behind it, and the slot ([`Slot`]). Which revision goes
//! in a slot is the agent's decision.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use bpfleet_proto::v1::HookKind;
use libbpf_rs::{
    Link, MapCore, MapFlags, MapHandle, MapType, ObjectBuilder, TracepointCategory, UprobeOpts,
};

use super::layout::{DispatcherPins, hook_of};
use super::obj_get;
use super::sys::ifindex;
use crate::error::{Error, Result};
use crate::hooks::hook_name;
use crate::state::EntryState;

fn attach_dispatcher(prog: &libbpf_rs::ProgramMut<'_>, e: &EntryState) -> Result<Link> {
    let hook = hook_of(e);
    let what = format!(
        "attaching {} to {} {}",
        e.bpf_program,
        hook_name(hook),
        e.target
    );
    match hook {
        HookKind::Tracepoint => {
            let (cat, name) = e.target.split_once('/').ok_or_else(|| {
                Error::Invalid(format!(
                    "tracepoint target {:?} is not category/name",
                    e.target
                ))
            })?;
            prog.attach_tracepoint(TracepointCategory::Custom(cat.to_string()), name)
                .map_err(|er| {
                    // E2BIG: the tracepoint already runs as many programs
                    // as the kernel allows (BPF_TRACE_MAX_PROGS, 64): one
                    // dispatcher per bpfleet program, and other tools'.
                    if er.kind() == libbpf_rs::ErrorKind::TooBig {
                        Error::Budget(format!(
                            "{what}: the tracepoint runs as many programs as the kernel allows \
                             (64 per tracepoint; each bpfleet program on it takes one): {er:#}"
                        ))
                    } else {
                        Error::kernel(what, er)
                    }
                })
        }
        HookKind::RawTracepoint => prog
            .attach_raw_tracepoint(&e.target)
            .map_err(|er| Error::kernel(what, er)),
        HookKind::Uprobe | HookKind::Uretprobe => {
            let (path, sym) = e.target.rsplit_once(':').ok_or_else(|| {
                Error::Invalid(format!("uprobe target {:?} is not /path:symbol", e.target))
            })?;
            let opts = UprobeOpts {
                retprobe: hook == HookKind::Uretprobe,
                func_name: Some(sym.to_string()),
                ..UprobeOpts::default()
            };
            let pid = if e.pid == 0 { -1 } else { e.pid };
            prog.attach_uprobe_with_opts(pid, path, 0, opts)
                .map_err(|er| Error::kernel(what, er))
        }
        HookKind::Xdp => prog
            .attach_xdp(ifindex(&e.target)?)
            .map_err(|er| Error::kernel(what, er)),
        other => Err(Error::Precondition(format!(
            "hook {} has no dispatcher",
            hook_name(other)
        ))),
    }
}

/// Loads a dispatcher for the hook of `e`, pins it and its (empty) slot,
/// attaches it and pins the link. Returns the dispatcher program. Pins it
/// made are pushed to `created`.
pub(super) fn create_dispatcher(
    e: &EntryState,
    pins: &DispatcherPins,
    created: &mut Vec<PathBuf>,
) -> Result<OwnedFd> {
    let hook = hook_of(e);
    let wanted = match hook {
        HookKind::Tracepoint => "dispatch_tp",
        HookKind::RawTracepoint => "dispatch_raw_tp",
        HookKind::Uprobe | HookKind::Uretprobe => "dispatch_uprobe",
        HookKind::Xdp => "dispatch_xdp",
        other => {
            return Err(Error::Precondition(format!(
                "hook {} has no dispatcher",
                hook_name(other)
            )));
        }
    };
    let mut builder = ObjectBuilder::default();
    builder
        .name("bpfleet_disp")
        .map_err(|er| Error::kernel("naming the dispatcher", er))?;
    let mut open = builder
        .open_memory(bpfleet_bpf::DISPATCH)
        .map_err(|er| Error::kernel("opening the dispatcher object", er))?;
    for mut p in open.progs_mut() {
        if p.name().as_bytes() != wanted.as_bytes() {
            p.set_autoload(false);
        }
    }
    let mut obj = open
        .load()
        .map_err(|er| Error::kernel("loading the dispatcher", er))?;
    let mut slot = obj
        .maps_mut()
        .find(|m| m.name().as_bytes() == b"slot")
        .ok_or_else(|| Error::Invalid("the dispatcher object has no slot map".into()))?;
    slot.pin(&pins.slot)
        .map_err(|er| Error::kernel(format!("pinning {}", pins.slot.display()), er))?;
    created.push(pins.slot.clone());
    let mut prog = obj
        .progs_mut()
        .find(|p| p.name().as_bytes() == wanted.as_bytes())
        .ok_or_else(|| Error::Invalid(format!("the dispatcher object has no {wanted}")))?;
    prog.pin(&pins.prog)
        .map_err(|er| Error::kernel(format!("pinning {}", pins.prog.display()), er))?;
    created.push(pins.prog.clone());
    let fd = prog
        .as_fd()
        .try_clone_to_owned()
        .map_err(|er| Error::io("duplicating the dispatcher fd", er))?;
    let mut link = attach_dispatcher(&prog, e)?;
    link.pin(&pins.link)
        .map_err(|er| Error::kernel(format!("pinning link {}", pins.link.display()), er))?;
    created.push(pins.link.clone());
    Ok(fd)
}

/// Checks that a dispatcher can tail-call `prog`: puts both into a
/// scratch program array (the first entry fixes what the array accepts,
/// the kernel refuses the second unless it is compatible).
pub(super) fn check_dispatchable(dispatcher: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> Result<()> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
        ..Default::default()
    };
    let scratch = MapHandle::create(MapType::ProgArray, None::<&str>, 4, 4, 2, &opts)
        .map_err(|er| Error::kernel("creating a scratch program array", er))?;
    for (i, fd) in [dispatcher, prog].into_iter().enumerate() {
        scratch
            .update(
                &(i as u32).to_ne_bytes(),
                &(fd.as_raw_fd() as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|er| Error::kernel("putting it into a program array", er))?;
    }
    Ok(())
}

/// Puts `prog` into a dispatcher's slot: from the next event on, the
/// A dispatcher's one-slot program array, opened from its pin.
#[derive(Debug)]
pub struct Slot(MapHandle);

impl Slot {
    /// Opens the slot pinned at `pin`.
    pub fn open(pin: &Path) -> Result<Self> {
        MapHandle::from_pinned_path(pin)
            .map(Slot)
            .map_err(|e| Error::kernel(format!("opening {}", pin.display()), e))
    }

    /// dispatcher runs it.
    pub fn set(&self, prog: BorrowedFd<'_>) -> Result<()> {
        self.0
            .update(
                &0u32.to_ne_bytes(),
                &(prog.as_raw_fd() as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|e| Error::kernel("writing the dispatcher slot", e))
    }

    /// Empties a dispatcher's slot: the hook runs nothing.
    pub fn clear(&self) -> Result<()> {
        match self.0.delete(&0u32.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::kernel("clearing the dispatcher slot", e)),
        }
    }

    /// Id of the program in a dispatcher's slot, if any.
    pub fn prog_id(&self) -> Option<u32> {
        self.0
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .ok()
            .flatten()
            .and_then(|v| v.get(..4).and_then(|b| b.try_into().ok()))
            .map(u32::from_ne_bytes)
    }
}

/// Opens a dispatcher program from its pin (for its run figures).
pub fn open_dispatcher(pin: &Path) -> Result<OwnedFd> {
    obj_get(pin)
}
