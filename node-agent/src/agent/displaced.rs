//! Persistent maps a revision recreated (`recreate_incompatible_maps`):
//! the old map leaves the shared pin during the load
//! ([`kernel::displaced_map_pin`]) and is pinned here into the directory
//! of every loaded revision whose programs use it (`<rev>/map_<name>`, in
//! the revision's `maps`, named in its `displaced_maps`), so a rollback
//! runs on it with its contents and unloading the last of them frees it.
//! When no revision left uses the map at the shared pin, the old map of
//! the revision that comes back (the active one, else the newest) is moved
//! back to the shared pin, so a later load is compared with (and reuses)
//! the layout that runs. Which revision uses which map is the kernel's
//! word (the map ids of its programs), so it holds after a restart.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::Path;

use super::{Agent, Runtime};
use crate::error::Result;
use crate::kernel;
use crate::names::pin_component;
use crate::state::ProgramState;

/// Map ids the programs of revision `rev` use.
fn revision_map_ids(rt: &Runtime, rev: &str) -> BTreeSet<u32> {
    rt.progs
        .iter()
        .filter(|((r, _), _)| r == rev)
        .filter_map(|(_, fd)| kernel::prog_map_ids(fd.as_fd()).ok())
        .flatten()
        .collect()
}

/// Pins the old map waiting at `old_pin` into the directory of each
/// revision using it (by map id) and removes `old_pin`; returns those
/// revisions. A map no revision uses is let go.
pub(super) fn keep_old_map(
    p: &mut ProgramState,
    rt: &Runtime,
    prog_dir: &Path,
    map: &str,
    old_pin: &Path,
) -> Result<Vec<String>> {
    let old_id = kernel::pinned_map_id(old_pin)?;
    let fd = kernel::obj_get(old_pin)?;
    let mut kept = Vec::new();
    for (rname, r) in p.revisions.iter_mut() {
        if !revision_map_ids(rt, rname).contains(&old_id) {
            continue;
        }
        let pin = prog_dir
            .join(rname)
            .join(format!("map_{}", pin_component(map)));
        if !pin.exists() {
            kernel::obj_pin(fd.as_fd(), &pin)?;
        }
        r.maps.insert(map.to_string(), pin);
        r.displaced_maps.insert(map.to_string());
        kept.push(rname.clone());
    }
    std::fs::remove_file(old_pin)
        .map_err(|e| crate::error::Error::io(format!("removing {}", old_pin.display()), e))?;
    Ok(kept)
}

impl Agent {
    /// After a revision left: every persistent map whose shared pin no
    /// remaining revision uses gets back the old map of a remaining
    /// revision that kept one (the active revision's, else the newest
    /// one's); the other revisions holding the same map drop their own
    /// pin of it. Returns what was restored, for the log and the audit.
    pub(super) fn restore_displaced(&mut self, program: &str) -> Vec<String> {
        let prog_dir = self.prog_dir(program);
        let (Some(p), Some(rt)) = (self.state.programs.get_mut(program), self.rt.get(program))
        else {
            return Vec::new();
        };
        let names: BTreeSet<String> = p
            .revisions
            .values()
            .flat_map(|r| r.displaced_maps.iter().cloned())
            .collect();
        let mut notes = Vec::new();
        for n in names {
            let shared = kernel::shared_map_pin(&prog_dir, &n);
            if let Ok(id) = kernel::pinned_map_id(&shared)
                && p.revisions
                    .keys()
                    .any(|r| revision_map_ids(rt, r).contains(&id))
            {
                continue;
            }
            let holders = |r: &&String| p.revisions[*r].displaced_maps.contains(&n);
            let back = p
                .active
                .as_ref()
                .filter(holders)
                .or_else(|| {
                    p.revisions
                        .iter()
                        .filter(|(_, r)| r.displaced_maps.contains(&n))
                        .max_by_key(|(_, r)| r.loaded_at_unix_ms)
                        .map(|(k, _)| k)
                })
                .cloned();
            let Some(back) = back else { continue };
            let Some(from) = p.revisions[&back].maps.get(&n).cloned() else {
                continue;
            };
            let Ok(id) = kernel::pinned_map_id(&from) else {
                continue;
            };
            let _ = std::fs::remove_file(&shared);
            if let Err(e) = std::fs::rename(&from, &shared) {
                tracing::error!(program, map = %n, error = %e, "cannot move the old map back to the shared pin");
                continue;
            }
            p.shared_maps.insert(n.clone(), shared.clone());
            let mut released = Vec::new();
            for (rname, r) in p.revisions.iter_mut() {
                if !r.displaced_maps.contains(&n) {
                    continue;
                }
                let Some(pin) = r.maps.get(&n).cloned() else {
                    continue;
                };
                let same = rname == &back || kernel::pinned_map_id(&pin).ok() == Some(id);
                if same {
                    if rname != &back {
                        let _ = std::fs::remove_file(&pin);
                    }
                    r.maps.remove(&n);
                    r.displaced_maps.remove(&n);
                    released.push(rname.clone());
                }
            }
            let note = format!(
                "map {n}: the map no remaining revision used left {}; the old map of {} (used by {}) is shared again",
                shared.display(),
                back,
                released.join(", ")
            );
            tracing::info!(program, "{note}");
            notes.push(note);
        }
        notes
    }
}

/// Memory of the old maps the revisions keep (each map once).
pub(super) fn displaced_bytes(p: &ProgramState) -> u64 {
    let mut seen = BTreeSet::new();
    p.revisions
        .values()
        .flat_map(|r| r.displaced_maps.iter().filter_map(|n| r.maps.get(n)))
        .filter(|pin| kernel::pinned_map_id(pin).is_ok_and(|id| seen.insert(id)))
        .map(|pin| kernel::maps::pinned_memory(pin))
        .sum()
}
