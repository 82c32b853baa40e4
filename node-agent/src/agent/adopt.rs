//! Re-adoption at start: what the state file knows and what is pinned
//! under the pin root become the agent's again, orphans included, and the
//! kernel (what the dispatcher slots and links run) decides which revision
//! is active, and the rollback history follows it. Never unloads a running
//! program; removes only what runs nothing: dispatcher pins whose link is
//! gone, the map pins of a revision whose programs are gone, and a program
//! with nothing pinned left.

use std::os::fd::AsFd;

use super::{Agent, MAX_HISTORY, Runtime};
use crate::error::Error;
use crate::kernel::{self, CONFIG_MAP, Slot};
use crate::names::check_name;
use crate::state::{ProgramState, RevisionState, SharedLink};

/// `bpfleet_config` slot of the TracerPolicy stamp (`bpfleet_gate.h`).
const POLICY_STAMP_SLOT: u32 = 15;

impl Agent {
    pub(super) fn adopt(&mut self) {
        self.state.version = crate::state::STATE_VERSION;
        // Programs the state file knows.
        let names: Vec<String> = self.state.programs.keys().cloned().collect();
        for name in names {
            self.adopt_program(&name);
        }
        // Pins nobody accounted for: adopt as orphans so Unload can remove them.
        let Ok(dir) = std::fs::read_dir(&self.cfg.pin_root) else {
            return;
        };
        for ent in dir.flatten() {
            let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if ent.path().is_dir()
                && check_name("program", &name).is_ok()
                && !self.state.programs.contains_key(&name)
            {
                self.problems.push(format!(
                    "program {name} was pinned but not in the state file; adopted as orphan"
                ));
                self.state.programs.insert(
                    name.clone(),
                    ProgramState {
                        next_token: 1,
                        ..Default::default()
                    },
                );
                self.adopt_program(&name);
                // What only the state file held (the namespace filter) is
                // gone: clear the policy stamp so that the operator writes
                // the whole policy again.
                if let Some(pin) = self
                    .state
                    .programs
                    .get(&name)
                    .and_then(|p| p.shared_maps.get(CONFIG_MAP))
                    && let Err(e) = kernel::maps::write_u64(pin, POLICY_STAMP_SLOT, 0)
                {
                    self.problems.push(format!(
                        "program {name}: could not clear the policy stamp in {}: {e}",
                        pin.display()
                    ));
                }
            }
        }
    }

    fn adopt_program(&mut self, name: &str) {
        let prog_dir = self.prog_dir(name);
        let log_ring = self.log_ring_pin();
        let mut rt = Runtime::default();
        let Some(p) = self.state.programs.get_mut(name) else {
            return;
        };
        let mut problems = Vec::new();
        // (key, pin, is the slot) of dispatchers found pinned.
        let mut dispatch_pins = Vec::new();
        // Old maps of a recreation a crash stopped before they were placed.
        let mut waiting = Vec::new();
        // Scan the program directory for pins the state file lacks.
        if let Ok(dir) = std::fs::read_dir(&prog_dir) {
            for ent in dir.flatten() {
                let fname = ent.file_name().to_string_lossy().into_owned();
                let path = ent.path();
                if let Some(m) = fname.strip_prefix(kernel::DISPLACED_PREFIX) {
                    waiting.push((m.to_string(), path));
                } else if let Some(m) = fname.strip_prefix("_map_") {
                    p.shared_maps.entry(m.to_string()).or_insert(path);
                } else if let Some(k) = fname.strip_prefix("_link_") {
                    p.shared_links.entry(k.to_string()).or_insert(SharedLink {
                        pin: path,
                        ..SharedLink::default()
                    });
                } else if let Some(k) = fname.strip_prefix("_slot_") {
                    dispatch_pins.push((k.to_string(), path, true));
                } else if let Some(k) = fname.strip_prefix("_disp_") {
                    dispatch_pins.push((k.to_string(), path, false));
                } else if path.is_dir()
                    && check_name("revision", &fname).is_ok()
                    && !p.revisions.contains_key(&fname)
                {
                    problems.push(format!("revision {name}/{fname} was pinned but not in the state file; adopted as orphan"));
                    let mut r = RevisionState {
                        orphaned: true,
                        ..Default::default()
                    };
                    if let Ok(rd) = std::fs::read_dir(&path) {
                        for f in rd.flatten() {
                            let n = f.file_name().to_string_lossy().into_owned();
                            if let Some(x) = n.strip_prefix("prog_") {
                                r.progs.insert(x.to_string(), f.path());
                            } else if let Some(x) = n.strip_prefix("map_") {
                                r.maps.insert(x.to_string(), f.path());
                            }
                        }
                    }
                    p.revisions.insert(fname, r);
                }
            }
        }
        // A revision pinned with the log's maps (bpfleet_log.h) uses the
        // node's log ring: known again when the state file missed it.
        let logs = p
            .revisions
            .values()
            .any(|r| r.maps.contains_key(kernel::LOG_DROPS_MAP));
        if logs && log_ring.exists() {
            p.shared_maps
                .entry(kernel::LOG_MAP.to_string())
                .or_insert(log_ring);
        }
        p.shared_maps.retain(|m, pin| {
            let ok = pin.exists();
            if !ok {
                problems.push(format!("shared map {name}/{m} is no longer pinned"));
            }
            ok
        });
        for (k, pin, is_slot) in dispatch_pins {
            match p.shared_links.get_mut(&k) {
                Some(l) if is_slot => {
                    l.slot.get_or_insert(pin);
                }
                Some(l) => {
                    l.dispatcher.get_or_insert(pin);
                }
                None => {
                    // A dispatcher whose link is gone runs nothing.
                    problems.push(format!("{} had no dispatcher link; removed", pin.display()));
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let mut gone = Vec::new();
        for (rname, r) in &p.revisions {
            let mut any = false;
            for (bp, pin) in &r.progs {
                match kernel::obj_get(pin) {
                    Ok(fd) => {
                        rt.progs.insert((rname.clone(), bp.clone()), fd);
                        any = true;
                    }
                    Err(e) => problems.push(format!("revision {name}/{rname}: {e}")),
                }
            }
            if !any {
                gone.push(rname.clone());
            }
        }
        for g in gone {
            problems.push(format!(
                "revision {name}/{g} has no pinned program left; dropped from state"
            ));
            // What is left of it (its maps, as an Unload stopped after the
            // programs leaves them) runs nothing and is its own: removed.
            if let Some(r) = p.revisions.remove(&g) {
                for pin in r.maps.values() {
                    let _ = std::fs::remove_file(pin);
                }
                let _ = std::fs::remove_dir(prog_dir.join(&g));
            }
        }
        // Old maps of recreated persistent maps: pinned in the revision
        // directories (`map_<name>` next to a shared `_map_<name>`); ones
        // the state file missed (lost, or a crash before its write) are
        // the revision's again.
        for (rname, r) in p.revisions.iter_mut() {
            let Ok(rd) = std::fs::read_dir(prog_dir.join(rname)) else {
                continue;
            };
            for f in rd.flatten() {
                let n = f.file_name().to_string_lossy().into_owned();
                let Some(m) = n.strip_prefix("map_") else {
                    continue;
                };
                if !p.shared_maps.contains_key(m) {
                    continue;
                }
                let known = r.maps.values().any(|pin| *pin == f.path());
                if !known || r.orphaned {
                    r.maps.insert(m.to_string(), f.path());
                    r.displaced_maps.insert(m.to_string());
                }
            }
        }
        for (m, pin) in waiting {
            match super::displaced::keep_old_map(p, &rt, &prog_dir, &m, &pin) {
                Ok(kept) => problems.push(format!(
                    "old map {name}/{m} of an interrupted recreation placed with revisions [{}]",
                    kept.join(", ")
                )),
                Err(e) => problems.push(format!("old map {}: {e}", pin.display())),
            }
        }
        let mut dead_links = Vec::new();
        for (k, l) in &p.shared_links {
            match kernel::obj_get(&l.pin) {
                Ok(fd) => {
                    if let Some(slot) = &l.slot {
                        let opened = Slot::open(slot).and_then(|h| {
                            let disp = l.dispatcher.as_deref().ok_or_else(|| {
                                Error::Precondition("its program is not pinned".into())
                            })?;
                            Ok((h, kernel::obj_get(disp)?))
                        });
                        match opened {
                            Ok((h, disp)) => {
                                rt.slots.insert(k.clone(), h);
                                rt.dispatchers.insert(k.clone(), disp);
                            }
                            Err(e) => problems.push(format!("dispatcher {name}/{k}: {e}")),
                        }
                    }
                    rt.links.insert(k.clone(), fd);
                }
                Err(e) => {
                    problems.push(format!("link {name}/{k}: {e}"));
                    dead_links.push(k.clone());
                }
            }
        }
        for k in dead_links {
            if let Some(l) = p.shared_links.remove(&k) {
                for pin in l.slot.iter().chain(&l.dispatcher) {
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        // The kernel decides what is active: what the dispatcher slots and
        // the links run.
        let prog_ids: Vec<(String, u32)> = rt
            .progs
            .iter()
            .filter_map(|((r, _), fd)| {
                kernel::prog_figures(fd.as_fd())
                    .ok()
                    .map(|f| (r.clone(), f.id))
            })
            .collect();
        let revision_of = |id: u32| {
            prog_ids
                .iter()
                .find(|(_, pid)| *pid == id)
                .map(|(r, _)| r.clone())
        };
        let mut kernel_active = rt
            .slots
            .values()
            .filter_map(Slot::prog_id)
            .find_map(&revision_of);
        if kernel_active.is_none() {
            for fd in rt.links.values() {
                if let Ok((_, prog_id)) = kernel::link_ids(fd.as_fd()) {
                    kernel_active = revision_of(prog_id);
                    if kernel_active.is_some() {
                        break;
                    }
                }
            }
        }
        if let Some(k) = &kernel_active
            && Some(k) != p.active.as_ref()
        {
            // Expected after a crash: switches persist in the background.
            tracing::info!(
                program = name,
                state_file = ?p.active,
                kernel = ?kernel_active,
                "state file trailed the kernel; following the kernel"
            );
            // The history as the switch would have left it: a rollback
            // walks back to the revision (in the history), an activation
            // pushes the one it replaced.
            if let Some(pos) = p.history.iter().rposition(|r| r == k) {
                p.history.truncate(pos);
            } else if let Some(old) = p.active.take() {
                p.history.push(old);
                if p.history.len() > MAX_HISTORY {
                    p.history.remove(0);
                }
            }
            p.active = kernel_active;
        } else if kernel_active.is_none()
            && let Some(a) = p.active.take()
        {
            // No slot or link runs it (an Unload stopped after removing
            // the link): it is not active, whatever the file said.
            problems.push(format!(
                "revision {name}/{a} was active in the state file but nothing runs it; now inactive"
            ));
        }
        if p.active
            .as_ref()
            .is_some_and(|a| !p.revisions.contains_key(a))
        {
            p.active = None;
        }
        p.next_token = p
            .next_token
            .max(p.revisions.values().map(|r| r.token).max().unwrap_or(0) + 1);
        // A program with nothing left (an Unload stopped before its state
        // write) is forgotten, with its empty directory.
        // (The node's log ring is not the program's.)
        let nothing_left = p.revisions.is_empty()
            && p.shared_links.is_empty()
            && p.shared_maps.keys().all(|m| m == kernel::LOG_MAP);
        for pr in &problems {
            tracing::warn!("{pr}");
        }
        self.problems.extend(problems);
        if nothing_left {
            self.state.programs.remove(name);
            if std::fs::remove_dir(&prog_dir).is_err() && prog_dir.exists() {
                self.problems.push(format!(
                    "program {name}: nothing of it is left but {} is not empty (pins the agent does not own?)",
                    prog_dir.display()
                ));
            }
            tracing::info!(
                program = name,
                "nothing of it is pinned any more; forgotten"
            );
            return;
        }
        self.rt.insert(name.to_string(), rt);
    }
}
