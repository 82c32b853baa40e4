//! Unload of one revision or of a whole program: removes the pins the
//! agent owns for it (links before their slots, so a hook stops before what
//! it runs goes) and nothing else; refuses to unload the active revision
//! while others remain.

use std::path::Path;

use super::Agent;
use super::request;
use crate::error::{Error, Result};
use crate::fault;
use crate::kernel;
use crate::state::{RevisionState, SharedLink};

impl Agent {
    /// Unloads a revision or (empty revision) the whole program. Removes
    /// the pins the agent owns for it and nothing else.
    pub fn unload(&mut self, program: &str, revision: &str, actor: &str) -> Result<Vec<String>> {
        self.recreations.clear();
        let res = self.unload_inner(program, revision);
        self.publish(program);
        let restored: String = self
            .recreations
            .drain(..)
            .map(|r| format!("; {r}"))
            .collect();
        self.audit_result(actor, "unload", program, revision, &res, |removed| {
            format!("{} pins removed{restored}", removed.len())
        });
        res
    }

    fn unload_inner(&mut self, program: &str, revision: &str) -> Result<Vec<String>> {
        request::names(program, revision, true)?;
        let Some(p) = self.state.programs.get(program) else {
            return Ok(Vec::new());
        };
        if !revision.is_empty() {
            if !p.revisions.contains_key(revision) {
                return Ok(Vec::new());
            }
            let only = p.revisions.len() == 1;
            if p.active.as_deref() == Some(revision) && !only {
                return Err(Error::Precondition(format!(
                    "revision {program}/{revision} is active; activate another revision first or unload the whole program"
                )));
            }
            if !only {
                let prog_dir = self.prog_dir(program);
                let mut removed = Vec::new();
                if let Some(rt) = self.rt.get_mut(program) {
                    rt.progs.retain(|(r, _), _| r != revision);
                }
                if let Some(p) = self.state.programs.get_mut(program) {
                    if let Some(r) = p.revisions.remove(revision) {
                        remove_revision_pins(&r, &mut removed);
                    }
                    p.history.retain(|h| h != revision);
                    // Dispatchers no remaining revision runs behind. A
                    // revision adopted from its pins alone (state file
                    // lost) has no entries on record: it may run behind
                    // any of them, so none goes until a Load names them.
                    let unknown = p.revisions.values().any(|r| r.entries.is_empty());
                    let used: Vec<String> = p
                        .revisions
                        .values()
                        .flat_map(|r| kernel::entry_keys(&r.entries))
                        .collect();
                    let unused: Vec<String> = p
                        .shared_links
                        .iter()
                        .filter(|(k, l)| !unknown && l.slot.is_some() && !used.contains(k))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in unused {
                        if let Some(rt) = self.rt.get_mut(program) {
                            rt.links.remove(&k);
                            rt.slots.remove(&k);
                            rt.dispatchers.remove(&k);
                        }
                        if let Some(l) = p.shared_links.remove(&k) {
                            remove_shared_link_pins(&l, &mut removed);
                        }
                    }
                }
                let _ = std::fs::remove_dir(prog_dir.join(revision));
                // A persistent map this revision recreated goes back to
                // the layout the remaining revisions run.
                let restored = self.restore_displaced(program);
                self.recreations.extend(restored);
                fault::point("unload.after_kernel");
                self.save()?;
                fault::point("unload.after_state");
                return Ok(removed);
            }
        }
        // The whole program.
        let prog_dir = self.prog_dir(program);
        self.rt.remove(program);
        let mut removed = Vec::new();
        if let Some(p) = self.state.programs.remove(program) {
            for l in p.shared_links.values() {
                remove_shared_link_pins(l, &mut removed);
            }
            for (rname, r) in &p.revisions {
                remove_revision_pins(r, &mut removed);
                let _ = std::fs::remove_dir(prog_dir.join(rname));
            }
            // The node's log ring goes with the last program using it.
            for (m, pin) in &p.shared_maps {
                if m != kernel::LOG_MAP {
                    remove_pin(pin, &mut removed);
                }
            }
        }
        let ring = self.log_ring_pin();
        let had_ring = ring.exists();
        self.let_go_of_log_ring();
        if had_ring && !ring.exists() {
            removed.push(ring.display().to_string());
        }
        if let Err(e) = std::fs::remove_dir(&prog_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            self.problems.push(format!(
                "{} kept: {e} (pins the agent does not own?)",
                prog_dir.display()
            ));
        }
        fault::point("unload.after_kernel");
        self.save()?;
        fault::point("unload.after_state");
        Ok(removed)
    }
}

fn remove_pin(pin: &Path, removed: &mut Vec<String>) {
    match std::fs::remove_file(pin) {
        Ok(()) => {
            removed.push(pin.display().to_string());
            fault::point("unload.mid_pins");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(pin = %pin.display(), error = %e, "cannot remove pin"),
    }
}

fn remove_revision_pins(r: &RevisionState, removed: &mut Vec<String>) {
    for pin in r.progs.values().chain(r.maps.values()) {
        remove_pin(pin, removed);
    }
}

fn remove_shared_link_pins(l: &SharedLink, removed: &mut Vec<String>) {
    // The link first: the hook stops before its slot goes.
    remove_pin(&l.pin, removed);
    for pin in l.slot.iter().chain(&l.dispatcher) {
        remove_pin(pin, removed);
    }
}
