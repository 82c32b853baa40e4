//! Where the agent pins what under `<pin-root>/<program>/`, the names of
//! the maps every revision shares, and the keys of the hook slots revisions
//! take turns on. Pure path and name arithmetic: no kernel call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bpfleet_proto::v1::HookKind;

use crate::hooks::hook_name;
use crate::names::pin_component;
use crate::state::EntryState;

/// Name of the config map written by UpdateConfig (shared by revisions).
pub const CONFIG_MAP: &str = "bpfleet_config";
/// Name of the TracerPolicy's port list (`bpfleet_gate.h`).
pub const PORTS_MAP: &str = "bpfleet_ports";
/// Maps of `bpfleet_gate.h` that every revision of a program shares
/// without naming them persistent: the config map and the TracerPolicy's
/// process and port lists.
pub const SHARED_MAPS: [&str; 3] = [CONFIG_MAP, "bpfleet_pids", PORTS_MAP];
/// Name of the per-revision program error counter.
pub const ERRORS_MAP: &str = "bpfleet_errors";
/// Section holding the revision token the agent writes before load.
pub const REVISION_SECTION: &str = ".rodata.bpfleet";
/// The node's log ring buffer (`bpfleet_log.h`): one per node, pinned at
/// [`log_ring_pin`] and handed to every object that declares it.
pub const LOG_MAP: &str = "bpfleet_log";
/// Per-revision, per-CPU count of log records dropped (slot 0: rate
/// limited, slot 1: ring full).
pub const LOG_DROPS_MAP: &str = "bpfleet_log_drops";
/// Section holding `bpfleet_log_origin`, written before load like the
/// revision token.
pub const LOG_SECTION: &str = ".rodata.bpflog";

/// Pin of the node's log ring: beside the program directories, under a
/// name no program can take (program names never start with `_`).
pub fn log_ring_pin(pin_root: &Path) -> PathBuf {
    pin_root.join("_bpfleet_log")
}
/// bpffs magic number.
/// Pin of a persistent (shared) map.
pub fn shared_map_pin(prog_dir: &Path, map: &str) -> PathBuf {
    prog_dir.join(format!("_map_{}", pin_component(map)))
}

/// File name prefix of a persistent map's old pin while a load that
/// recreates it runs (`_old_map_<map>`), until the agent pins the old map
/// into the directories of the revisions using it.
pub const DISPLACED_PREFIX: &str = "_old_map_";

/// Where a persistent map's old pin waits while a revision recreates it.
pub fn displaced_map_pin(prog_dir: &Path, map: &str) -> PathBuf {
    prog_dir.join(format!("{DISPLACED_PREFIX}{}", pin_component(map)))
}

/// Key of a link-update entry: the hook slot the revisions take turns on.
pub fn shared_link_key(e: &EntryState) -> String {
    format!("{}-{}", hook_name(hook_of(e)), pin_component(&e.target))
}

/// Keys of a revision's entries: the hook slot each takes turns on with
/// the other revisions. The n-th (n > 1) entry of one revision on the same
/// hook and target gets `-n` appended, so each has a slot of its own.
pub fn entry_keys(entries: &[EntryState]) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    entries
        .iter()
        .map(|e| {
            let base = shared_link_key(e);
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            if *n == 1 { base } else { format!("{base}-{n}") }
        })
        .collect()
}

/// Pin of a dispatcher's program array.
pub fn slot_pin(prog_dir: &Path, key: &str) -> PathBuf {
    prog_dir.join(format!("_slot_{key}"))
}

/// Pin of a dispatcher program (kept so the agent reads its run figures
/// without CAP_SYS_ADMIN, which opening a program by id needs).
pub fn dispatcher_pin(prog_dir: &Path, key: &str) -> PathBuf {
    prog_dir.join(format!("_disp_{key}"))
}

/// Pins of one dispatcher.
#[derive(Debug, Clone)]
pub struct DispatcherPins {
    /// Its link on the hook.
    pub link: PathBuf,
    /// Its one-slot program array.
    pub slot: PathBuf,
    /// The dispatcher program.
    pub prog: PathBuf,
}

/// Pin of a shared link.
pub fn shared_link_pin(prog_dir: &Path, key: &str) -> PathBuf {
    prog_dir.join(format!("_link_{key}"))
}

/// The hook of an entry (validated before it is stored).
pub fn hook_of(e: &EntryState) -> HookKind {
    HookKind::try_from(e.hook).unwrap_or(HookKind::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_are_flat_file_names_and_unique_per_revision() {
        let e = |bp: &str, target: &str| EntryState {
            bpf_program: bp.into(),
            hook: HookKind::Tracepoint as i32,
            target: target.into(),
            pid: 0,
        };
        let keys = entry_keys(&[
            e("a", "syscalls/sys_enter_getppid"),
            e("b", "syscalls/sys_enter_read"),
            e("c", "syscalls/sys_enter_getppid"),
        ]);
        assert_eq!(
            keys,
            [
                "tracepoint-syscalls_sys_enter_getppid",
                "tracepoint-syscalls_sys_enter_read",
                "tracepoint-syscalls_sys_enter_getppid-2",
            ]
        );
        // Another revision with other program names takes the same slots.
        assert_eq!(
            entry_keys(&[e("a2", "syscalls/sys_enter_getppid")])[0],
            keys[0]
        );
        assert!(keys.iter().all(|k| !k.contains('/')));
    }
}
