//! Load, in one pass: decode the request ([`super::request`]), read the
//! object, admit it ([`super::admit`]: digest, idempotency, trust, node
//! support, capabilities, budgets), load it into the kernel
//! ([`crate::kernel::load`]), then record it in the state and publish the
//! views. Nothing reaches the kernel before admission said yes. A Load of
//! a revision adopted as an orphan (pinned by a Load that crashed before
//! its state write, or known only from the pins after the state file was
//! lost) claims it when it runs and its programs have the object's kernel
//! tags, and replaces it when it does not run.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bpfleet_proto::v1 as pb;

use super::Agent;
use super::admit::{Admission, Admitted, Held, Node, admit};
use super::object_dirs;
use super::request::{self, LoadCmd, ObjectSource, check_object_len};
use crate::audit::now_ms;
use crate::error::{Error, Result};
use crate::fault;
use crate::image::Fetched;
use crate::kernel::{self, Slot};
use crate::names::pin_component;
use crate::state::{ProgramState, RevisionState, RunFigures, SharedLink};

impl Agent {
    /// Loads a revision, inactive. Idempotent by (program, revision, digest).
    pub fn load(&mut self, req: pb::LoadRequest, actor: &str) -> Result<(pb::RevisionInfo, bool)> {
        self.load_fetched(req, None, actor)
    }

    /// Load of a request whose image source was fetched before the agent
    /// was locked (`crate::image`): `fetched` is that outcome, audited and
    /// answered like any other refusal.
    pub fn load_fetched(
        &mut self,
        req: pb::LoadRequest,
        fetched: Option<Result<Fetched>>,
        actor: &str,
    ) -> Result<(pb::RevisionInfo, bool)> {
        let program = req.program.clone();
        let revision = req.revision.clone();
        let image = match &fetched {
            Some(Ok(f)) => format!(
                " image {} manifest {} signed_by {} cached {}",
                f.reference,
                f.manifest_digest,
                f.signer.as_deref().unwrap_or("-"),
                f.cached
            ),
            _ => String::new(),
        };
        self.recreations.clear();
        let res = self.load_inner(req, fetched);
        let recreated: String = self
            .recreations
            .drain(..)
            .map(|r| format!(" recreated {r}"))
            .collect();
        self.audit_result(
            actor,
            "load",
            &program,
            &revision,
            &res,
            |(info, created)| {
                format!(
                    "sha256 {} created {created} load_ns {}{image}{recreated}",
                    info.sha256, info.load_nanos
                )
            },
        );
        res
    }

    fn load_inner(
        &mut self,
        req: pb::LoadRequest,
        fetched: Option<Result<Fetched>>,
    ) -> Result<(pb::RevisionInfo, bool)> {
        let mut cmd = request::load(req)?;
        let bytes = match (&cmd.source, fetched) {
            (ObjectSource::Image(_), Some(f)) => {
                let f = f?;
                check_object_len(f.object.len(), self.cfg.max_object_bytes)?;
                cmd.verified_by = f.signer;
                f.object
            }
            _ => self.read_object(&cmd.source)?,
        };
        self.load_inner_cmd(cmd, &bytes)
    }

    fn load_inner_cmd(&mut self, cmd: LoadCmd, bytes: &[u8]) -> Result<(pb::RevisionInfo, bool)> {
        let budgets = self.cfg.budgets();
        let map_bytes = |p: &ProgramState| program_map_bytes(p);
        let admission = admit(
            &cmd,
            bytes,
            &Held {
                state: &self.state,
                map_bytes: &map_bytes,
            },
            &Node {
                support: &self.support,
                caps: kernel::caps::effective(),
                budgets: &budgets,
                verifiers: &self.verifiers,
            },
        )?;
        match admission {
            Admission::AlreadyLoaded => {
                let info = self.revision_info(&cmd.program, &cmd.revision)?;
                Ok((info, false))
            }
            Admission::Load(a) => self.load_admitted(cmd, bytes, a),
            Admission::Orphan { sha256 } => self.load_over_orphan(cmd, bytes, sha256),
        }
    }

    /// Load of a revision adopted as an orphan. Active (its code runs):
    /// claimed when its pinned programs are this object's (same kernel
    /// tags), so the record is whole again and nothing is reloaded;
    /// refused otherwise, for it must not be unloaded by a Load. Inactive
    /// (as a crash in the middle of a Load leaves it): its pins are
    /// removed and the object is loaded afresh.
    fn load_over_orphan(
        &mut self,
        cmd: LoadCmd,
        bytes: &[u8],
        sha256: String,
    ) -> Result<(pb::RevisionInfo, bool)> {
        let (program, revision) = (cmd.program.clone(), cmd.revision.clone());
        let p = self
            .state
            .programs
            .get(&program)
            .ok_or_else(|| Error::NotFound(format!("program {program}")))?;
        if p.active.as_deref() != Some(revision.as_str()) {
            self.remove_orphan(&program, &revision);
            self.save()?;
            return self.load_inner_cmd(cmd, bytes);
        }
        let tags = kernel::program_tags(bytes, &program, &cmd.entries)?;
        let rt = self.rt.get(&program);
        let pinned: BTreeMap<&String, Option<[u8; 8]>> = p
            .revisions
            .get(&revision)
            .map(|r| {
                r.progs
                    .keys()
                    .map(|bp| {
                        let fd = rt.and_then(|rt| rt.progs.get(&(revision.clone(), bp.clone())));
                        (
                            bp,
                            fd.and_then(|fd| kernel::prog_figures(fd.as_fd()).ok())
                                .map(|f| f.tag),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let same = pinned.len() == tags.len()
            && tags.iter().all(|(bp, t)| pinned.get(bp) == Some(&Some(*t)));
        if !same {
            return Err(Error::Precondition(format!(
                "revision {program}/{revision} runs pinned programs without a record, and they are not this object's; unload the program to replace it"
            )));
        }
        let token = self.orphan_token(&program, &revision);
        let p = self
            .state
            .programs
            .get_mut(&program)
            .ok_or_else(|| Error::NotFound(format!("program {program}")))?;
        for m in &cmd.persistent_maps {
            if !p.persistent_maps.contains(m) {
                p.persistent_maps.push(m.clone());
            }
        }
        p.next_token = p.next_token.max(token + 1);
        // Links adopted from their pins alone learn their hook from the
        // entries.
        for (e, key) in cmd.entries.iter().zip(kernel::entry_keys(&cmd.entries)) {
            if let Some(l) = p.shared_links.get_mut(&key)
                && l.target.is_empty()
            {
                l.hook = e.hook;
                l.target = e.target.clone();
            }
        }
        if let Some(r) = p.revisions.get_mut(&revision) {
            r.orphaned = false;
            r.sha256 = sha256;
            r.token = token;
            r.entries = cmd.entries;
            r.loaded_at_unix_ms = now_ms();
        }
        tracing::info!(
            program,
            revision,
            "orphaned revision claimed: its running programs are the object's"
        );
        self.save()?;
        self.publish(&program);
        let info = self.revision_info(&program, &revision)?;
        Ok((info, false))
    }

    /// Removes the pins of an inactive orphaned revision and forgets it.
    fn remove_orphan(&mut self, program: &str, revision: &str) {
        if let Some(rt) = self.rt.get_mut(program) {
            rt.progs.retain(|(r, _), _| r != revision);
        }
        let Some(r) = self
            .state
            .programs
            .get_mut(program)
            .and_then(|p| p.revisions.remove(revision))
        else {
            return;
        };
        for pin in r.progs.values().chain(r.maps.values()) {
            let _ = std::fs::remove_file(pin);
        }
        let _ = std::fs::remove_dir(self.prog_dir(program).join(revision));
        tracing::info!(
            program,
            revision,
            "orphaned revision removed to be loaded afresh"
        );
    }

    /// The token an orphan's code was loaded with (its `bpfleet_revision`
    /// section), 0 when it has none pinned. An orphan's maps are named
    /// after their pins, where the section's dots became underscores.
    fn orphan_token(&self, program: &str, revision: &str) -> u64 {
        let section = pin_component(kernel::REVISION_SECTION);
        self.state
            .programs
            .get(program)
            .and_then(|p| p.revisions.get(revision))
            .and_then(|r| {
                r.maps
                    .iter()
                    .find(|(m, _)| m.ends_with(kernel::REVISION_SECTION) || m.ends_with(&section))
            })
            .and_then(|(_, pin)| kernel::maps::read_u64(pin, 0))
            .unwrap_or(0)
    }

    /// The object's bytes, refused when empty or larger than the agent
    /// accepts (a file is measured before it is read).
    fn read_object(&self, source: &ObjectSource) -> Result<Vec<u8>> {
        let max = self.cfg.max_object_bytes;
        let bytes = match source {
            ObjectSource::Bytes(b) => b.clone(),
            ObjectSource::Image(i) => {
                return Err(Error::Precondition(format!(
                    "image {}: images are pulled by the agent's gRPC service before a load; this call came without it",
                    i.reference
                )));
            }
            ObjectSource::Path(path) => self.read_object_file(path)?,
        };
        check_object_len(bytes.len(), max)?;
        Ok(bytes)
    }

    /// A path source's bytes: resolved and checked against `--object-dir`
    /// before anything is read ([`object_dirs`]), opened without following
    /// a symlink or blocking, then checked again through the open handle
    /// (where it really is, a regular file, its size) so nothing swapped
    /// in between is read.
    fn read_object_file(&self, path: &Path) -> Result<Vec<u8>> {
        let max = self.cfg.max_object_bytes;
        let dirs = &self.cfg.object_dirs;
        let resolved = object_dirs::resolve(path, dirs)?;
        let p = resolved.display();
        let file = kernel::sys::open_no_follow(&resolved)
            .map_err(|e| Error::io(format!("opening {p}"), e))?;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| Error::io(format!("locating the opened {p}"), e))?;
        object_dirs::opened_within(path, &real, dirs)?;
        let meta = file
            .metadata()
            .map_err(|e| Error::io(format!("reading {p}"), e))?;
        if !meta.is_file() {
            return Err(object_dirs::not_regular(path));
        }
        if meta.len() > max as u64 {
            return Err(Error::Invalid(format!(
                "object {p} is {} bytes, at most {max} accepted",
                meta.len(),
            )));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        // One byte more than allowed: a file grown since fstat is caught.
        (&file)
            .take(max as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(format!("reading {p}"), e))?;
        Ok(bytes)
    }

    /// The kernel part and the state part of a load admission allowed.
    fn load_admitted(
        &mut self,
        cmd: LoadCmd,
        bytes: &[u8],
        a: Admitted,
    ) -> Result<(pb::RevisionInfo, bool)> {
        let prog_dir = self.prog_dir(&cmd.program);
        std::fs::create_dir_all(&prog_dir)
            .map_err(|e| Error::io(format!("creating {}", prog_dir.display()), e))?;
        let rev_dir = prog_dir.join(&cmd.revision);
        let dispatchers: BTreeMap<String, PathBuf> = self
            .state
            .programs
            .get(&cmd.program)
            .map(|p| {
                p.shared_links
                    .iter()
                    .filter_map(|(k, l)| Some((k.clone(), l.dispatcher.clone()?)))
                    .collect()
            })
            .unwrap_or_default();
        let started = Instant::now();
        let log_ring = self.log_ring_pin();
        let spec = kernel::ObjectLoad {
            bytes,
            prog_dir: &prog_dir,
            rev_dir: &rev_dir,
            entries: &cmd.entries,
            persistent_maps: &cmd.persistent_maps,
            recreate_maps: &cmd.recreate_maps,
            token: a.token,
            log_origin: crate::names::log_origin(&cmd.program, &cmd.revision),
            log_ring: &log_ring,
            log_ring_bytes: self.cfg.bpf_log_ring_bytes,
            max_new_map_bytes: a.map_room,
            room_by: &a.room_by,
            name: &cmd.program,
            dispatchers: &dispatchers,
            denied_helpers: &self.cfg.denied_helpers,
        };
        let mut loaded = match kernel::load(&spec) {
            Ok(l) => l,
            Err(e) => {
                if a.new_program {
                    let _ = std::fs::remove_dir(&prog_dir);
                }
                return Err(e);
            }
        };
        let load_nanos = started.elapsed().as_nanos() as u64;
        let recreated = std::mem::take(&mut loaded.recreated);

        let p = self
            .state
            .programs
            .entry(cmd.program.clone())
            .or_insert_with(|| ProgramState {
                next_token: 1,
                ..Default::default()
            });
        p.next_token = a.token + 1;
        p.budget_group = cmd.group.as_ref().map(|g| g.name.clone());
        for m in &cmd.persistent_maps {
            if !p.persistent_maps.contains(m) {
                p.persistent_maps.push(m.clone());
            }
        }
        // Shared maps libbpf created or reused for this revision.
        let mut shared: Vec<(String, PathBuf)> = kernel::SHARED_MAPS
            .iter()
            .map(|m| (m.to_string(), kernel::shared_map_pin(&prog_dir, m)))
            .collect();
        for m in &cmd.persistent_maps {
            shared.push((m.clone(), kernel::shared_map_pin(&prog_dir, m)));
        }
        for (m, pin) in shared {
            if pin.exists() {
                p.shared_maps.insert(m, pin);
            }
        }
        // The node's log ring, listed with each program that uses it.
        if loaded.log_ring {
            p.shared_maps
                .insert(kernel::LOG_MAP.to_string(), log_ring.clone());
        }
        let rt = self.rt.entry(cmd.program.clone()).or_default();
        let keys = kernel::entry_keys(&cmd.entries);
        for (key, pins) in loaded.dispatchers {
            let Some(e) = keys.iter().position(|k| *k == key).map(|i| &cmd.entries[i]) else {
                continue;
            };
            rt.dispatchers
                .insert(key.clone(), kernel::obj_get(&pins.prog)?);
            rt.slots.insert(key.clone(), Slot::open(&pins.slot)?);
            rt.links.insert(key.clone(), kernel::obj_get(&pins.link)?);
            p.shared_links.insert(
                key,
                SharedLink {
                    pin: pins.link,
                    hook: e.hook,
                    target: e.target.clone(),
                    slot: Some(pins.slot),
                    dispatcher: Some(pins.prog),
                    base: RunFigures::default(),
                },
            );
        }
        for (bp, pin) in &loaded.progs {
            rt.progs
                .insert((cmd.revision.clone(), bp.clone()), kernel::obj_get(pin)?);
        }
        p.revisions.insert(
            cmd.revision.clone(),
            RevisionState {
                sha256: a.sha256,
                token: a.token,
                entries: cmd.entries,
                progs: loaded.progs,
                maps: loaded.maps,
                loaded_at_unix_ms: now_ms(),
                load_nanos,
                orphaned: false,
                map_memory_bytes: loaded.map_memory_bytes,
                dispatched: BTreeMap::new(),
                displaced_maps: Default::default(),
                sampling: loaded.sampling,
            },
        );
        // Old maps of what this revision recreated: kept by the revisions
        // that use them.
        for rec in &recreated {
            let kept = match super::displaced::keep_old_map(
                p,
                rt,
                &prog_dir,
                &rec.map,
                &rec.old_pin,
            ) {
                Ok(kept) => kept,
                Err(e) => {
                    // The new revision is loaded; the old map stays at
                    // its waiting pin and the next start places it.
                    tracing::error!(program = cmd.program, map = rec.map, error = %e, "cannot pin the old map for the revisions using it");
                    self.problems.push(format!(
                        "program {}: old map {} left at {}: {e}",
                        cmd.program,
                        rec.map,
                        rec.old_pin.display()
                    ));
                    Vec::new()
                }
            };
            let kept = if kept.is_empty() {
                "no loaded revision, let go".to_string()
            } else {
                kept.join(",")
            };
            tracing::warn!(
                program = cmd.program,
                revision = cmd.revision,
                map = rec.map,
                old_map_id = rec.old_id,
                kept_by = kept,
                "persistent map recreated (pinned -> this revision): {}",
                rec.diff
            );
            self.recreations.push(format!(
                "map {} (pinned -> this revision: {}) old map id {} kept by {kept}",
                rec.map, rec.diff, rec.old_id
            ));
        }
        fault::point("load.after_kernel");
        self.save()?;
        fault::point("load.after_state");
        self.publish(&cmd.program);
        let info = self.revision_info(&cmd.program, &cmd.revision)?;
        Ok((info, true))
    }
}

/// Map memory one program uses: what its revisions created plus its
/// shared maps as the kernel accounts them now (not the node's log ring,
/// which is the agent's).
pub(super) fn program_map_bytes(p: &ProgramState) -> u64 {
    let own: u64 = p.revisions.values().map(|r| r.map_memory_bytes).sum();
    let shared: u64 = p
        .shared_maps
        .iter()
        .filter(|(m, _)| *m != kernel::LOG_MAP)
        .map(|(_, pin)| pin)
        .map(|pin| kernel::maps::pinned_memory(pin))
        .sum();
    own + shared + super::displaced::displaced_bytes(p)
}
