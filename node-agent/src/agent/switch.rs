//! Switching revisions: Activate and Rollback. One dispatcher slot write
//! per dispatched hook, one `bpf_link_update` per linked hook, no reload
//! and no verifier run; the dispatcher's run figures are settled to the
//! revision that ran before each slot change. Owns the history rollbacks
//! walk back through.

use std::os::fd::AsFd;
use std::time::Instant;

use bpfleet_proto::v1::SwitchMethod;

use super::request;
use super::{Agent, Runtime};
use crate::error::{Error, Result};
use crate::fault;
use crate::hooks::switch_method;
use crate::kernel::{self, hook_of};
use crate::state::{EntryState, ProgramState, RunFigures, SharedLink};

/// Rollback history kept per program.
pub const MAX_HISTORY: usize = 32;

/// Result of a switch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Switched {
    /// Now active.
    pub active: String,
    /// Active before.
    pub previous: String,
    /// Time of the kernel operations.
    pub nanos: u64,
}

impl Agent {
    /// Makes `revision` the active one.
    pub fn activate(&mut self, program: &str, revision: &str, actor: &str) -> Result<Switched> {
        let res = self.switch_to(program, revision, true);
        if res.is_ok() {
            fault::point("activate.after_kernel");
            self.save_soon();
            fault::point_after("activate.after_state", || self.persister.flush());
        }
        self.publish(program);
        self.audit_switch(actor, "activate", program, revision, &res);
        res
    }

    /// Switches back to the previously active revision, or to `to`.
    pub fn rollback(&mut self, program: &str, to: &str, actor: &str) -> Result<Switched> {
        let res = self.rollback_inner(program, to);
        self.publish(program);
        self.audit_switch(actor, "rollback", program, to, &res);
        res
    }

    fn audit_switch(
        &self,
        actor: &str,
        action: &str,
        program: &str,
        revision: &str,
        res: &Result<Switched>,
    ) {
        let revision = res.as_ref().map_or(revision, |s| s.active.as_str());
        self.audit_result(actor, action, program, revision, res, |s| {
            format!("previous {} switch_ns {}", s.previous, s.nanos)
        });
    }

    fn rollback_inner(&mut self, program: &str, to: &str) -> Result<Switched> {
        request::names(program, "", true)?;
        let p = self
            .state
            .programs
            .get(program)
            .ok_or_else(|| Error::NotFound(format!("program {program}")))?;
        let target = if to.is_empty() {
            let active = p.active.clone();
            p.history
                .iter()
                .rev()
                .find(|r| Some(*r) != active.as_ref() && p.revisions.contains_key(*r))
                .cloned()
                .ok_or_else(|| {
                    Error::Precondition(format!(
                        "program {program} has no previous revision to roll back to"
                    ))
                })?
        } else {
            to.to_string()
        };
        let res = self.switch_to(program, &target, false)?;
        if let Some(p) = self.state.programs.get_mut(program) {
            // Walk back: drop the history up to and including the target.
            if let Some(pos) = p.history.iter().rposition(|r| *r == target) {
                p.history.truncate(pos);
            }
        }
        fault::point("rollback.after_kernel");
        self.save_soon();
        fault::point_after("rollback.after_state", || self.persister.flush());
        Ok(res)
    }

    fn switch_to(&mut self, program: &str, revision: &str, push_history: bool) -> Result<Switched> {
        request::names(program, revision, false)?;
        let prog_dir = self.prog_dir(program);
        let p = self
            .state
            .programs
            .get_mut(program)
            .ok_or_else(|| Error::NotFound(format!("program {program}")))?;
        let r = p
            .revisions
            .get(revision)
            .ok_or_else(|| Error::NotFound(format!("revision {program}/{revision}")))?;
        if r.orphaned {
            return Err(Error::Precondition(format!(
                "revision {program}/{revision} was adopted as an orphan; it can only be unloaded"
            )));
        }
        let previous = p.active.clone().unwrap_or_default();
        if previous == revision {
            return Ok(Switched {
                active: revision.to_string(),
                previous,
                nanos: 0,
            });
        }
        let rt = self.rt.entry(program.to_string()).or_default();
        let new_entries = r.entries.clone();
        let new_keys = kernel::entry_keys(&new_entries);
        let old_entries: Vec<EntryState> = p
            .revisions
            .get(&previous)
            .map(|o| o.entries.clone())
            .unwrap_or_default();
        let old_keys = kernel::entry_keys(&old_entries);
        // What the previous revision ran on a key.
        let old_program = |key: &str| {
            old_keys
                .iter()
                .position(|k| k == key)
                .map(|i| old_entries[i].bpf_program.clone())
        };

        let started = Instant::now();
        for (e, key) in new_entries.iter().zip(&new_keys) {
            let new_fd = rt
                .progs
                .get(&(revision.to_string(), e.bpf_program.clone()))
                .ok_or_else(|| {
                    Error::Precondition(format!(
                        "program {} of {revision} is not open",
                        e.bpf_program
                    ))
                })?;
            if switch_method(hook_of(e)) == SwitchMethod::Dispatch {
                let slot = rt.slots.get(key).ok_or_else(|| {
                    Error::Precondition(format!(
                        "the dispatcher {key} of {program} is gone; unload the program and load it again"
                    ))
                })?;
                settle(p, rt, key, &previous, old_program(key).as_deref());
                slot.set(new_fd.as_fd())?;
                continue;
            }
            if let Some(link) = rt.links.get(key) {
                let old_fd = old_program(key).and_then(|bp| rt.progs.get(&(previous.clone(), bp)));
                kernel::link_update(link.as_fd(), new_fd.as_fd(), old_fd.map(AsFd::as_fd))?;
            } else {
                let pin = kernel::shared_link_pin(&prog_dir, key);
                let fd = kernel::create_shared_link(new_fd.as_fd(), e, &pin)?;
                rt.links.insert(key.clone(), fd);
                p.shared_links.insert(
                    key.clone(),
                    SharedLink {
                        pin,
                        hook: e.hook,
                        target: e.target.clone(),
                        ..SharedLink::default()
                    },
                );
            }
        }
        // Hooks the new revision does not use: dispatchers stop running
        // anything (other revisions may still use them); links are detached.
        let stale: Vec<(String, bool)> = p
            .shared_links
            .iter()
            .filter(|(k, _)| !new_keys.contains(k))
            .map(|(k, l)| (k.clone(), l.slot.is_some()))
            .collect();
        for (k, dispatcher) in &stale {
            if *dispatcher && let Some(slot) = rt.slots.get(k) {
                settle(p, rt, k, &previous, old_program(k).as_deref());
                slot.clear()?;
            }
        }
        let nanos = started.elapsed().as_nanos() as u64;
        for (k, dispatcher) in stale {
            if !dispatcher {
                rt.links.remove(&k);
                if let Some(l) = p.shared_links.remove(&k) {
                    let _ = std::fs::remove_file(&l.pin);
                }
            }
        }
        if push_history && !previous.is_empty() {
            p.history.push(previous.clone());
            if p.history.len() > MAX_HISTORY {
                p.history.remove(0);
            }
        }
        p.active = Some(revision.to_string());
        Ok(Switched {
            active: revision.to_string(),
            previous,
            nanos,
        })
    }
}

/// Closes the active period of a dispatcher slot before it changes: the
/// dispatcher's runs since the slot last changed are credited to the
/// revision program that was in it (tail-called programs have no kernel
/// run figures of their own), and the dispatcher's figures become the new
/// base.
fn settle(
    p: &mut ProgramState,
    rt: &Runtime,
    key: &str,
    revision: &str,
    bpf_program: Option<&str>,
) {
    let Some(now) = rt
        .dispatchers
        .get(key)
        .and_then(|fd| kernel::prog_figures(fd.as_fd()).ok())
    else {
        return;
    };
    let now = RunFigures {
        runs: now.run_cnt,
        run_ns: now.run_time_ns,
    };
    let Some(link) = p.shared_links.get_mut(key) else {
        return;
    };
    let base = std::mem::replace(&mut link.base, now);
    if let Some(bp) = bpf_program
        && let Some(r) = p.revisions.get_mut(revision)
    {
        let acc = r.dispatched.entry(bp.to_string()).or_default();
        acc.runs += now.runs.saturating_sub(base.runs);
        acc.run_ns += now.run_ns.saturating_sub(base.run_ns);
    }
}

/// The dispatcher's figures since its slot last changed.
pub(super) fn since_settled(rt: &Runtime, link: &SharedLink, key: &str) -> RunFigures {
    rt.dispatchers
        .get(key)
        .and_then(|fd| kernel::prog_figures(fd.as_fd()).ok())
        .map_or(RunFigures::default(), |f| RunFigures {
            runs: f.run_cnt.saturating_sub(link.base.runs),
            run_ns: f.run_time_ns.saturating_sub(link.base.run_ns),
        })
}
