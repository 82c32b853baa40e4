//! The agent's core: the programs and revisions it owns, and the lifecycle
//! operations on them (load, activate, rollback, unload, config, stats),
//! with trust checks, budgets, the state file and the audit log. It is
//! transport-free: the gRPC server and the tests call it directly. It owns
//! every pin under the pin root that its state file or its pin-root scan
//! accounts for, and touches nothing else.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use bpfleet_proto::v1::{
    self as pb, HookKind, LinkInfo, NodeInfoResponse, ProgramEntry, RevisionState as PbState,
    SwitchMethod, load_request::Source,
};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};

use crate::audit::{Audit, now_ms};
use crate::error::{Error, Result};
use crate::hooks::{self, NodeSupport, check_caps, hook_from_i32, switch_method};
use crate::kernel::{self, CONFIG_MAP, ERRORS_MAP, hook_of};
use crate::names::check_name;
use crate::state::{
    EntryState, Persister, ProgramState, RevisionState, RunFigures, SharedLink, StateFile,
};
use crate::trust::{Verifiers, check_digest};

/// Most entries one revision may declare.
pub const MAX_ENTRIES: usize = 64;
/// Most persistent maps one revision may declare.
pub const MAX_PERSISTENT_MAPS: usize = 32;
/// `bpfleet_config` slot of the TracerPolicy stamp (`bpfleet_gate.h`).
const POLICY_STAMP_SLOT: u32 = 15;
/// Longest hook target accepted.
pub const MAX_TARGET: usize = 4096;
/// Rollback history kept per program.
pub const MAX_HISTORY: usize = 32;

/// Agent configuration (from the command line).
#[derive(Debug, Clone)]
pub struct Config {
    /// Root of the agent's pins on bpffs.
    pub pin_root: PathBuf,
    /// State file path (outside bpffs).
    pub state_file: PathBuf,
    /// JSON-lines audit log.
    pub audit_log: Option<PathBuf>,
    /// Most programs (names) loaded at once.
    pub max_programs: usize,
    /// Most revisions per program.
    pub max_revisions: usize,
    /// Map memory budget of one program (all its revisions and shared maps).
    pub max_map_bytes_per_program: u64,
    /// Map memory budget of the whole agent.
    pub max_map_bytes_total: u64,
    /// Largest object accepted.
    pub max_object_bytes: usize,
    /// Trusted public keys: (name, PEM).
    pub trusted_keys: Vec<(String, String)>,
    /// Accept objects without a signature.
    pub allow_unsigned: bool,
    /// Turn on kernel run-time stats while the agent runs.
    pub enable_stats: bool,
    /// Node name reported by NodeInfo.
    pub node_name: String,
}

impl Config {
    /// Defaults for a pin root and a state file.
    pub fn new(pin_root: impl Into<PathBuf>, state_file: impl Into<PathBuf>) -> Self {
        Self {
            pin_root: pin_root.into(),
            state_file: state_file.into(),
            audit_log: None,
            max_programs: 64,
            max_revisions: 8,
            max_map_bytes_per_program: 64 << 20,
            max_map_bytes_total: 512 << 20,
            max_object_bytes: 16 << 20,
            trusted_keys: Vec::new(),
            allow_unsigned: false,
            enable_stats: true,
            node_name: String::new(),
        }
    }
}

#[derive(Default)]
struct Runtime {
    /// Dispatcher key -> its slot (program array).
    slots: BTreeMap<String, MapHandle>,
    /// Dispatcher key -> the dispatcher program (for its run figures).
    dispatchers: BTreeMap<String, OwnedFd>,
    /// (revision, bpf program) -> program fd.
    progs: BTreeMap<(String, String), OwnedFd>,
    /// Shared link key -> link fd.
    links: BTreeMap<String, OwnedFd>,
}

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

/// A program as [`Agent::program_views`] shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgramView {
    pub program: String,
    /// Shared map name -> pin.
    pub shared_maps: BTreeMap<String, PathBuf>,
    /// Revision -> revision token.
    pub revisions: BTreeMap<String, u64>,
    pub active: Option<String>,
    /// The namespace filter (empty: none).
    pub namespaces: Vec<String>,
}

/// The node agent.
pub struct Agent {
    cfg: Config,
    verifiers: Verifiers,
    state: StateFile,
    rt: BTreeMap<String, Runtime>,
    support: NodeSupport,
    audit: Audit,
    stats_fd: Option<OwnedFd>,
    problems: Vec<String>,
    persister: Persister,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("pin_root", &self.config().pin_root)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts the agent: bpffs, state file, re-adoption of what is pinned.
    /// Never unloads anything.
    pub fn new(cfg: Config) -> Result<Self> {
        kernel::install_libbpf_log();
        kernel::ensure_bpffs(&cfg.pin_root)?;
        if let Some(dir) = cfg.state_file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let state = StateFile::read(&cfg.state_file)?;
        let verifiers = Verifiers::new(&cfg.trusted_keys, cfg.allow_unsigned)?;
        let audit = Audit::new(cfg.audit_log.as_deref())?;
        let stats_fd = if cfg.enable_stats {
            match kernel::enable_stats() {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "BPF run-time stats unavailable");
                    None
                }
            }
        } else {
            None
        };
        let cfg_state_file = cfg.state_file.clone();
        let mut agent = Self {
            cfg,
            verifiers,
            state,
            rt: BTreeMap::new(),
            support: NodeSupport::probe(),
            audit,
            stats_fd,
            problems: Vec::new(),
            persister: Persister::new(cfg_state_file),
        };
        agent.adopt();
        agent.save()?;
        Ok(agent)
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn save(&mut self) -> Result<()> {
        self.persister.save_now(&self.state)
    }

    fn save_soon(&mut self) {
        self.persister.save_soon(&self.state);
    }

    fn prog_dir(&self, program: &str) -> PathBuf {
        self.cfg.pin_root.join(program)
    }

    // ------------------------------------------------------------ adoption

    fn adopt(&mut self) {
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
                    && let Err(e) = MapHandle::from_pinned_path(pin).and_then(|h| {
                        h.update(
                            &POLICY_STAMP_SLOT.to_ne_bytes(),
                            &0u64.to_ne_bytes(),
                            MapFlags::ANY,
                        )
                    })
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
        let mut rt = Runtime::default();
        let Some(p) = self.state.programs.get_mut(name) else {
            return;
        };
        let mut problems = Vec::new();
        // (key, pin, is the slot) of dispatchers found pinned.
        let mut dispatch_pins = Vec::new();
        // Scan the program directory for pins the state file lacks.
        if let Ok(dir) = std::fs::read_dir(&prog_dir) {
            for ent in dir.flatten() {
                let fname = ent.file_name().to_string_lossy().into_owned();
                let path = ent.path();
                if let Some(m) = fname.strip_prefix("_map_") {
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
            p.revisions.remove(&g);
        }
        let mut dead_links = Vec::new();
        for (k, l) in &p.shared_links {
            match kernel::obj_get(&l.pin) {
                Ok(fd) => {
                    if let Some(slot) = &l.slot {
                        let opened = MapHandle::from_pinned_path(slot)
                            .map_err(|e| Error::kernel(format!("opening {}", slot.display()), e))
                            .and_then(|h| {
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
            .filter_map(kernel::slot_prog_id)
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
        if kernel_active.is_some() && kernel_active != p.active {
            // Expected after a crash: switches persist in the background.
            tracing::info!(
                program = name,
                state_file = ?p.active,
                kernel = ?kernel_active,
                "state file trailed the kernel; following the kernel"
            );
            p.active = kernel_active;
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
        for pr in &problems {
            tracing::warn!("{pr}");
        }
        self.problems.extend(problems);
        self.rt.insert(name.to_string(), rt);
    }

    // ----------------------------------------------------------------- load

    /// Loads a revision, inactive. Idempotent by (program, revision, digest).
    pub fn load(&mut self, req: pb::LoadRequest, actor: &str) -> Result<(pb::RevisionInfo, bool)> {
        let program = req.program.clone();
        let revision = req.revision.clone();
        let res = self.load_inner(req);
        match &res {
            Ok((info, created)) => self.audit.write(
                actor,
                "load",
                &program,
                &revision,
                "ok",
                &format!(
                    "sha256 {} created {created} load_ns {}",
                    info.sha256, info.load_nanos
                ),
            ),
            Err(e) => {
                self.audit
                    .write(actor, "load", &program, &revision, e.kind(), &e.to_string())
            }
        }
        res
    }

    fn load_inner(&mut self, req: pb::LoadRequest) -> Result<(pb::RevisionInfo, bool)> {
        check_name("program", &req.program)?;
        check_name("revision", &req.revision)?;
        if req.entries.is_empty() {
            return Err(Error::Invalid(
                "a revision needs at least one program entry".into(),
            ));
        }
        if req.entries.len() > MAX_ENTRIES {
            return Err(Error::Invalid(format!(
                "{} entries, at most {MAX_ENTRIES}",
                req.entries.len()
            )));
        }
        if req.persistent_maps.len() > MAX_PERSISTENT_MAPS {
            return Err(Error::Invalid(format!(
                "{} persistent maps, at most {MAX_PERSISTENT_MAPS}",
                req.persistent_maps.len()
            )));
        }
        for m in &req.persistent_maps {
            if m.is_empty() || m.len() > 64 || m.contains('/') || m.contains('\0') {
                return Err(Error::Invalid(format!(
                    "persistent map name {m:?} is not a map name"
                )));
            }
        }
        let mut entries = Vec::with_capacity(req.entries.len());
        for (i, e) in req.entries.iter().enumerate() {
            let hook =
                hook_from_i32(e.hook).map_err(|er| Error::Invalid(format!("entry {i}: {er}")))?;
            if e.bpf_program.is_empty() || e.bpf_program.len() > 128 {
                return Err(Error::Invalid(format!(
                    "entry {i}: bpf_program must be 1..=128 bytes"
                )));
            }
            if e.target.is_empty() || e.target.len() > MAX_TARGET || e.target.contains('\0') {
                return Err(Error::Invalid(format!(
                    "entry {i}: target must be 1..={MAX_TARGET} bytes without NUL"
                )));
            }
            entries.push(EntryState {
                bpf_program: e.bpf_program.clone(),
                hook: hook as i32,
                target: e.target.clone(),
                pid: e.pid,
            });
        }
        let bytes = match req.source {
            Some(Source::Object(b)) => b,
            Some(Source::ObjectPath(p)) => {
                let path = Path::new(&p);
                if !path.is_absolute() {
                    return Err(Error::Invalid(format!(
                        "object_path {p:?} must be absolute"
                    )));
                }
                let meta =
                    std::fs::metadata(path).map_err(|e| Error::io(format!("reading {p}"), e))?;
                if meta.len() > self.cfg.max_object_bytes as u64 {
                    return Err(Error::Invalid(format!(
                        "object {p} is {} bytes, at most {} accepted",
                        meta.len(),
                        self.cfg.max_object_bytes
                    )));
                }
                std::fs::read(path).map_err(|e| Error::io(format!("reading {p}"), e))?
            }
            None => {
                return Err(Error::Invalid(
                    "no object: set object bytes or object_path".into(),
                ));
            }
        };
        if bytes.is_empty() {
            return Err(Error::Invalid("object is empty".into()));
        }
        if bytes.len() > self.cfg.max_object_bytes {
            return Err(Error::Invalid(format!(
                "object is {} bytes, at most {} accepted",
                bytes.len(),
                self.cfg.max_object_bytes
            )));
        }
        check_digest(&bytes, &req.sha256)?;
        let sha = crate::trust::sha256_hex(&bytes);
        // Idempotency by (program, revision).
        if let Some(r) = self
            .state
            .programs
            .get(&req.program)
            .and_then(|p| p.revisions.get(&req.revision))
        {
            if r.sha256 == sha {
                let info = self.revision_info(&req.program, &req.revision)?;
                return Ok((info, false));
            }
            return Err(Error::AlreadyExists(format!(
                "revision {}/{} is loaded with digest {}; revisions are immutable (this object is {sha})",
                req.program, req.revision, r.sha256
            )));
        }
        self.verifiers.check(&bytes, &req.signature)?;
        for e in &entries {
            let h = hook_of(e);
            self.support.check(h)?;
            check_caps(h)?;
        }
        // Budgets.
        let existing = self.state.programs.get(&req.program);
        if existing.is_none() && self.state.programs.len() >= self.cfg.max_programs {
            return Err(Error::Budget(format!(
                "{} programs loaded, at most {}",
                self.state.programs.len(),
                self.cfg.max_programs
            )));
        }
        if let Some(p) = existing
            && p.revisions.len() >= self.cfg.max_revisions
        {
            return Err(Error::Budget(format!(
                "program {} has {} revisions, at most {}; unload one first",
                req.program,
                p.revisions.len(),
                self.cfg.max_revisions
            )));
        }
        let prog_limit = if let Some(b) = &req.budget
            && b.max_map_memory_bytes > 0
        {
            b.max_map_memory_bytes
                .min(self.cfg.max_map_bytes_per_program)
        } else {
            self.cfg.max_map_bytes_per_program
        };
        let used_prog = existing.map_or(0, |p| self.program_map_bytes(p));
        let used_total: u64 = self
            .state
            .programs
            .values()
            .map(|p| self.program_map_bytes(p))
            .sum();
        let room = prog_limit
            .saturating_sub(used_prog)
            .min(self.cfg.max_map_bytes_total.saturating_sub(used_total));

        let prog_dir = self.prog_dir(&req.program);
        let new_program = existing.is_none();
        std::fs::create_dir_all(&prog_dir)
            .map_err(|e| Error::io(format!("creating {}", prog_dir.display()), e))?;
        let token = existing.map_or(1, |p| p.next_token.max(1));
        let rev_dir = prog_dir.join(&req.revision);
        let dispatchers: BTreeMap<String, PathBuf> = existing
            .map(|p| {
                p.shared_links
                    .iter()
                    .filter_map(|(k, l)| Some((k.clone(), l.dispatcher.clone()?)))
                    .collect()
            })
            .unwrap_or_default();
        let started = Instant::now();
        let spec = kernel::LoadSpec {
            bytes: &bytes,
            prog_dir: &prog_dir,
            rev_dir: &rev_dir,
            entries: &entries,
            persistent_maps: &req.persistent_maps,
            token,
            max_new_map_bytes: room,
            name: &req.program,
            dispatchers: &dispatchers,
        };
        let loaded = match kernel::load(&spec) {
            Ok(l) => l,
            Err(e) => {
                if new_program {
                    let _ = std::fs::remove_dir(&prog_dir);
                }
                return Err(e);
            }
        };
        let load_nanos = started.elapsed().as_nanos() as u64;

        let p = self
            .state
            .programs
            .entry(req.program.clone())
            .or_insert_with(|| ProgramState {
                next_token: 1,
                ..Default::default()
            });
        p.next_token = token + 1;
        for m in &req.persistent_maps {
            if !p.persistent_maps.contains(m) {
                p.persistent_maps.push(m.clone());
            }
        }
        // Shared maps libbpf created or reused for this revision.
        let mut shared: Vec<(String, PathBuf)> = kernel::SHARED_MAPS
            .iter()
            .map(|m| (m.to_string(), kernel::shared_map_pin(&prog_dir, m)))
            .collect();
        for m in &req.persistent_maps {
            shared.push((m.clone(), kernel::shared_map_pin(&prog_dir, m)));
        }
        for (m, pin) in shared {
            if pin.exists() {
                p.shared_maps.insert(m, pin);
            }
        }
        let rt = self.rt.entry(req.program.clone()).or_default();
        let keys = kernel::entry_keys(&entries);
        for (key, pins) in loaded.dispatchers {
            let Some(e) = keys.iter().position(|k| *k == key).map(|i| &entries[i]) else {
                continue;
            };
            rt.dispatchers
                .insert(key.clone(), kernel::obj_get(&pins.prog)?);
            rt.slots.insert(
                key.clone(),
                MapHandle::from_pinned_path(&pins.slot)
                    .map_err(|er| Error::kernel(format!("opening {}", pins.slot.display()), er))?,
            );
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
                .insert((req.revision.clone(), bp.clone()), kernel::obj_get(pin)?);
        }
        p.revisions.insert(
            req.revision.clone(),
            RevisionState {
                sha256: sha,
                token,
                entries,
                progs: loaded.progs,
                maps: loaded.maps,
                loaded_at_unix_ms: now_ms(),
                load_nanos,
                orphaned: false,
                map_memory_bytes: loaded.map_memory_bytes,
                dispatched: BTreeMap::new(),
            },
        );
        self.save()?;
        let info = self.revision_info(&req.program, &req.revision)?;
        Ok((info, true))
    }

    fn program_map_bytes(&self, p: &ProgramState) -> u64 {
        let own: u64 = p.revisions.values().map(|r| r.map_memory_bytes).sum();
        let shared: u64 = p
            .shared_maps
            .values()
            .filter_map(|pin| MapHandle::from_pinned_path(pin).ok())
            .map(|h| kernel::map_memory(&h))
            .sum();
        own + shared
    }

    // --------------------------------------------------------------- switch

    /// Makes `revision` the active one.
    pub fn activate(&mut self, program: &str, revision: &str, actor: &str) -> Result<Switched> {
        let res = self.switch_to(program, revision, true);
        self.audit_switch(actor, "activate", program, revision, &res);
        res
    }

    /// Switches back to the previously active revision, or to `to`.
    pub fn rollback(&mut self, program: &str, to: &str, actor: &str) -> Result<Switched> {
        let res = self.rollback_inner(program, to);
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
        match res {
            Ok(s) => self.audit.write(
                actor,
                action,
                program,
                &s.active,
                "ok",
                &format!("previous {} switch_ns {}", s.previous, s.nanos),
            ),
            Err(e) => self
                .audit
                .write(actor, action, program, revision, e.kind(), &e.to_string()),
        }
    }

    fn rollback_inner(&mut self, program: &str, to: &str) -> Result<Switched> {
        check_name("program", program)?;
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
        self.save_soon();
        Ok(res)
    }

    fn switch_to(&mut self, program: &str, revision: &str, push_history: bool) -> Result<Switched> {
        check_name("program", program)?;
        check_name("revision", revision)?;
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
                kernel::slot_set(slot, new_fd.as_fd())?;
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
                kernel::slot_clear(slot)?;
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
        self.save_soon();
        Ok(Switched {
            active: revision.to_string(),
            previous,
            nanos,
        })
    }

    // --------------------------------------------------------------- unload

    /// Unloads a revision or (empty revision) the whole program. Removes
    /// the pins the agent owns for it and nothing else.
    pub fn unload(&mut self, program: &str, revision: &str, actor: &str) -> Result<Vec<String>> {
        let res = self.unload_inner(program, revision);
        match &res {
            Ok(removed) => self.audit.write(
                actor,
                "unload",
                program,
                revision,
                "ok",
                &format!("{} pins removed", removed.len()),
            ),
            Err(e) => {
                self.audit
                    .write(actor, "unload", program, revision, e.kind(), &e.to_string())
            }
        }
        res
    }

    fn unload_inner(&mut self, program: &str, revision: &str) -> Result<Vec<String>> {
        check_name("program", program)?;
        if !revision.is_empty() {
            check_name("revision", revision)?;
        }
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
                    // Dispatchers no remaining revision runs behind.
                    let used: Vec<String> = p
                        .revisions
                        .values()
                        .flat_map(|r| kernel::entry_keys(&r.entries))
                        .collect();
                    let unused: Vec<String> = p
                        .shared_links
                        .iter()
                        .filter(|(k, l)| l.slot.is_some() && !used.contains(k))
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
                self.save()?;
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
            for pin in p.shared_maps.values() {
                remove_pin(pin, &mut removed);
            }
        }
        if let Err(e) = std::fs::remove_dir(&prog_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            self.problems.push(format!(
                "{} kept: {e} (pins the agent does not own?)",
                prog_dir.display()
            ));
        }
        self.save()?;
        Ok(removed)
    }

    // ---------------------------------------------------------------- views

    fn revision_info(&self, program: &str, revision: &str) -> Result<pb::RevisionInfo> {
        let p = self
            .state
            .programs
            .get(program)
            .ok_or_else(|| Error::NotFound(format!("program {program}")))?;
        let r = p
            .revisions
            .get(revision)
            .ok_or_else(|| Error::NotFound(format!("revision {program}/{revision}")))?;
        let rt = self.rt.get(program);
        let mut prog_ids = Vec::new();
        for bp in r.progs.keys() {
            if let Some(fd) = rt.and_then(|rt| rt.progs.get(&(revision.to_string(), bp.clone())))
                && let Ok(f) = kernel::prog_figures(fd.as_fd())
            {
                prog_ids.push(f.id);
            }
        }
        let mut links = Vec::new();
        for (e, key) in r.entries.iter().zip(kernel::entry_keys(&r.entries)) {
            let method = switch_method(hook_of(e));
            let pin = p.shared_links.get(&key).map(|l| l.pin.clone());
            let (link_id, mut prog_id) = pin
                .as_ref()
                .and_then(|pin| kernel::obj_get(pin).ok())
                .and_then(|fd| kernel::link_ids(fd.as_fd()).ok())
                .unwrap_or_default();
            if method == SwitchMethod::Dispatch {
                // The dispatcher runs what is in its slot.
                prog_id = rt
                    .and_then(|rt| rt.slots.get(&key))
                    .and_then(kernel::slot_prog_id)
                    .unwrap_or(0);
            }
            links.push(LinkInfo {
                entry: key,
                hook: e.hook,
                target: e.target.clone(),
                switch_method: method as i32,
                pin: pin.map(|p| p.display().to_string()).unwrap_or_default(),
                link_id,
                prog_id,
            });
        }
        let pins = r
            .progs
            .values()
            .chain(r.maps.values())
            .map(|p| p.display().to_string())
            .collect();
        let state = if r.orphaned {
            PbState::Orphaned
        } else if p.active.as_deref() == Some(revision) {
            PbState::Active
        } else {
            PbState::Inactive
        };
        Ok(pb::RevisionInfo {
            program: program.to_string(),
            revision: revision.to_string(),
            state: state as i32,
            sha256: r.sha256.clone(),
            revision_token: r.token,
            prog_ids,
            pins,
            links,
            entries: r
                .entries
                .iter()
                .map(|e| ProgramEntry {
                    bpf_program: e.bpf_program.clone(),
                    hook: e.hook,
                    target: e.target.clone(),
                    pid: e.pid,
                })
                .collect(),
            loaded_at_unix_ms: r.loaded_at_unix_ms,
            load_nanos: r.load_nanos,
        })
    }

    /// Programs, revisions, links and pins.
    pub fn list(&self, program: &str) -> Result<Vec<pb::ProgramInfo>> {
        let mut out = Vec::new();
        for (name, p) in &self.state.programs {
            if !program.is_empty() && name != program {
                continue;
            }
            let mut revisions = Vec::new();
            for r in p.revisions.keys() {
                revisions.push(self.revision_info(name, r)?);
            }
            let shared_pins = p
                .shared_maps
                .values()
                .chain(p.shared_links.values().map(|l| &l.pin))
                .chain(
                    p.shared_links
                        .values()
                        .flat_map(|l| l.slot.iter().chain(&l.dispatcher)),
                )
                .map(|p| p.display().to_string())
                .collect();
            out.push(pb::ProgramInfo {
                program: name.clone(),
                active_revision: p.active.clone().unwrap_or_default(),
                revisions,
                shared_pins,
                persistent_maps: p.persistent_maps.clone(),
                config: p
                    .shared_maps
                    .get(CONFIG_MAP)
                    .map(|pin| read_config(pin))
                    .transpose()?
                    .unwrap_or_default(),
                namespaces: p.namespaces.clone(),
            });
        }
        if !program.is_empty() && out.is_empty() {
            return Err(Error::NotFound(format!("program {program}")));
        }
        Ok(out)
    }

    /// Kernel statistics per revision.
    pub fn stats(&self, program: &str) -> Result<pb::StatsResponse> {
        if !program.is_empty() && !self.state.programs.contains_key(program) {
            return Err(Error::NotFound(format!("program {program}")));
        }
        let mut revisions = Vec::new();
        for (name, p) in &self.state.programs {
            if !program.is_empty() && name != program {
                continue;
            }
            let rt = self.rt.get(name);
            let shared_bytes: u64 = p
                .shared_maps
                .values()
                .filter_map(|pin| MapHandle::from_pinned_path(pin).ok())
                .map(|h| kernel::map_memory(&h))
                .sum();
            for (rname, r) in &p.revisions {
                let mut rs = pb::RevisionStats {
                    program: name.clone(),
                    revision: rname.clone(),
                    active: p.active.as_deref() == Some(rname.as_str()),
                    load_nanos: r.load_nanos,
                    ..Default::default()
                };
                // Programs behind a dispatcher: what it ran for them.
                let mut dispatched = r.dispatched.clone();
                if rs.active
                    && let Some(rt) = rt
                {
                    for (e, key) in r.entries.iter().zip(kernel::entry_keys(&r.entries)) {
                        if let Some(l) = p.shared_links.get(&key).filter(|l| l.slot.is_some()) {
                            let open = since_settled(rt, l, &key);
                            let acc = dispatched.entry(e.bpf_program.clone()).or_default();
                            acc.runs += open.runs;
                            acc.run_ns += open.run_ns;
                        }
                    }
                }
                for bp in r.progs.keys() {
                    if let Some(fd) = rt.and_then(|rt| rt.progs.get(&(rname.clone(), bp.clone())))
                        && let Ok(f) = kernel::prog_figures(fd.as_fd())
                    {
                        let d = dispatched.get(bp).copied().unwrap_or_default();
                        let run_cnt = f.run_cnt + d.runs;
                        let run_time_ns = f.run_time_ns + d.run_ns;
                        rs.run_cnt += run_cnt;
                        rs.run_time_ns += run_time_ns;
                        rs.progs.push(pb::ProgStats {
                            bpf_program: bp.clone(),
                            prog_id: f.id,
                            run_cnt,
                            run_time_ns,
                            recursion_misses: f.recursion_misses,
                        });
                    }
                }
                let mut own = 0;
                for (m, pin) in &r.maps {
                    if let Ok(h) = MapHandle::from_pinned_path(pin) {
                        own += kernel::map_memory(&h);
                        if m == ERRORS_MAP {
                            rs.program_errors = kernel::percpu_sum(&h);
                        }
                    }
                }
                rs.map_memory_bytes = own + if rs.active { shared_bytes } else { 0 };
                revisions.push(rs);
            }
        }
        Ok(pb::StatsResponse {
            revisions,
            stats_enabled: self.stats_fd.is_some(),
        })
    }

    /// Every program's shared map pins, revisions with their gate tokens,
    /// and active revision: what runtimes reading shared maps (the HTTP
    /// tracer's ring buffer) need, without kernel calls.
    pub fn program_views(&self) -> Vec<ProgramView> {
        self.state
            .programs
            .iter()
            .map(|(name, p)| ProgramView {
                program: name.clone(),
                shared_maps: p.shared_maps.clone(),
                revisions: p
                    .revisions
                    .iter()
                    .filter(|(_, r)| !r.orphaned)
                    .map(|(n, r)| (n.clone(), r.token))
                    .collect(),
                active: p.active.clone(),
                namespaces: p.namespaces.clone(),
            })
            .collect()
    }

    /// Writes config map entries into every pinned instance of the map.
    pub fn update_config(
        &mut self,
        req: &pb::UpdateConfigRequest,
        actor: &str,
    ) -> Result<Vec<String>> {
        let res = self.update_config_inner(req);
        let map = if req.map.is_empty() {
            CONFIG_MAP
        } else {
            req.map.as_str()
        };
        match &res {
            Ok(w) => self.audit.write(
                actor,
                "update_config",
                &req.program,
                "",
                "ok",
                &match &req.namespaces {
                    None => format!(
                        "map {map}: {} entries into {} maps",
                        req.entries.len(),
                        w.len()
                    ),
                    Some(n) => format!(
                        "map {map}: {} entries into {} maps; namespace filter [{}]",
                        req.entries.len(),
                        w.len(),
                        n.names.join(",")
                    ),
                },
            ),
            Err(e) => self.audit.write(
                actor,
                "update_config",
                &req.program,
                "",
                e.kind(),
                &e.to_string(),
            ),
        }
        res
    }

    fn update_config_inner(&mut self, req: &pb::UpdateConfigRequest) -> Result<Vec<String>> {
        check_name("program", &req.program)?;
        let namespaces = req
            .namespaces
            .as_ref()
            .map(|n| namespace_list(&n.names))
            .transpose()?;
        let only_namespaces = namespaces.is_some() && req.entries.is_empty() && !req.replace;
        if !only_namespaces
            && (req.entries.len() > 4096 || (req.entries.is_empty() && !req.replace))
        {
            return Err(Error::Invalid(
                "entries: 1..=4096 expected (0 only with replace or namespaces)".into(),
            ));
        }
        if !self.state.programs.contains_key(&req.program) {
            return Err(Error::NotFound(format!("program {}", req.program)));
        }
        let written = if only_namespaces {
            Vec::new()
        } else {
            self.write_map(req)?
        };
        if let Some(ns) = namespaces
            && let Some(p) = self.state.programs.get_mut(&req.program)
            && p.namespaces != ns
        {
            p.namespaces = ns;
            self.save()?;
        }
        Ok(written)
    }

    /// The map part of UpdateConfig (its entry count already checked):
    /// every entry checked against every instance of the map before the
    /// first is written.
    fn write_map(&self, req: &pb::UpdateConfigRequest) -> Result<Vec<String>> {
        let map = if req.map.is_empty() {
            CONFIG_MAP
        } else {
            req.map.as_str()
        };
        let p = self
            .state
            .programs
            .get(&req.program)
            .ok_or_else(|| Error::NotFound(format!("program {}", req.program)))?;
        let mut pins: Vec<PathBuf> = Vec::new();
        if let Some(pin) = p.shared_maps.get(map) {
            pins.push(pin.clone());
        } else {
            pins.extend(
                p.revisions
                    .values()
                    .filter_map(|r| r.maps.get(map).cloned()),
            );
        }
        if pins.is_empty() {
            return Err(Error::NotFound(format!(
                "program {} has no map named {map}",
                req.program
            )));
        }
        let handles: Vec<MapHandle> = pins
            .iter()
            .map(|pin| {
                MapHandle::from_pinned_path(pin)
                    .map_err(|e| Error::kernel(format!("opening {}", pin.display()), e))
            })
            .collect::<Result<_>>()?;
        for h in &handles {
            if req.replace && !matches!(h.map_type(), MapType::Hash | MapType::LruHash) {
                return Err(Error::Invalid(format!(
                    "replace: map {map} is a {:?} map; only hash maps can be replaced",
                    h.map_type()
                )));
            }
            for (i, e) in req.entries.iter().enumerate() {
                if e.key.len() != h.key_size() as usize || e.value.len() != h.value_size() as usize
                {
                    return Err(Error::Invalid(format!(
                        "entry {i}: map {map} takes {}-byte keys and {}-byte values, got {} and {}",
                        h.key_size(),
                        h.value_size(),
                        e.key.len(),
                        e.value.len()
                    )));
                }
            }
        }
        for h in &handles {
            for e in &req.entries {
                h.update(&e.key, &e.value, MapFlags::ANY)
                    .map_err(|er| Error::kernel(format!("writing {map}"), er))?;
            }
            if req.replace {
                // The new entries are in before the stale ones go, so a
                // filter never passes through empty.
                let keep: std::collections::HashSet<&[u8]> =
                    req.entries.iter().map(|e| e.key.as_slice()).collect();
                let stale: Vec<Vec<u8>> =
                    h.keys().filter(|k| !keep.contains(k.as_slice())).collect();
                for k in stale {
                    match h.delete(&k) {
                        Ok(()) => {}
                        // Deleted meanwhile by someone else: gone either way.
                        Err(er) if er.kind() == libbpf_rs::ErrorKind::NotFound => {}
                        Err(er) => return Err(Error::kernel(format!("clearing {map}"), er)),
                    }
                }
            }
        }
        Ok(pins.iter().map(|p| p.display().to_string()).collect())
    }

    /// Health of the agent.
    pub fn health(&self) -> pb::HealthResponse {
        let mut problems = self.problems.clone();
        if !kernel::is_bpffs(&self.cfg.pin_root) {
            problems.push(format!(
                "pin root {} is not on bpffs",
                self.cfg.pin_root.display()
            ));
        }
        pb::HealthResponse {
            ok: problems.is_empty(),
            pin_root: self.cfg.pin_root.display().to_string(),
            programs: self.state.programs.len() as u32,
            revisions: self
                .state
                .programs
                .values()
                .map(|p| p.revisions.len() as u32)
                .sum(),
            problems,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// What this node offers.
    pub fn node_info(&self) -> NodeInfoResponse {
        let eff = hooks::effective_caps();
        let mut have = Vec::new();
        let mut missing = Vec::new();
        for c in [
            hooks::caps::BPF,
            hooks::caps::PERFMON,
            hooks::caps::NET_ADMIN,
            hooks::caps::SYS_ADMIN,
            hooks::caps::SYS_RESOURCE,
        ] {
            if eff & (1u64 << c) != 0 {
                have.push(hooks::caps::name(c).to_string());
            } else {
                missing.push(hooks::caps::name(c).to_string());
            }
        }
        NodeInfoResponse {
            node_name: self.cfg.node_name.clone(),
            kernel_release: kernel_release(),
            btf_present: Path::new("/sys/kernel/btf/vmlinux").exists(),
            bpffs_mounted: kernel::is_bpffs(&self.cfg.pin_root),
            hooks: self.support.rows(),
            capabilities: have,
            missing_capabilities: missing,
        }
    }

    /// Whether a hook is usable here (for callers that pre-check).
    pub fn hook_supported(&self, h: HookKind) -> Result<()> {
        self.support.check(h)
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
fn since_settled(rt: &Runtime, link: &SharedLink, key: &str) -> RunFigures {
    rt.dispatchers
        .get(key)
        .and_then(|fd| kernel::prog_figures(fd.as_fd()).ok())
        .map_or(RunFigures::default(), |f| RunFigures {
            runs: f.run_cnt.saturating_sub(link.base.runs),
            run_ns: f.run_time_ns.saturating_sub(link.base.run_ns),
        })
}

fn remove_pin(pin: &Path, removed: &mut Vec<String>) {
    match std::fs::remove_file(pin) {
        Ok(()) => removed.push(pin.display().to_string()),
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

fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: u is writable.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// A namespace filter as UpdateConfig gives it: at most 64 Kubernetes
/// namespace names (DNS labels), sorted, without repeats.
fn namespace_list(names: &[String]) -> Result<Vec<String>> {
    if names.len() > 64 {
        return Err(Error::Invalid(format!(
            "namespaces: at most 64, got {}",
            names.len()
        )));
    }
    for (i, n) in names.iter().enumerate() {
        let ok = (1..=63).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !n.starts_with('-')
            && !n.ends_with('-');
        if !ok {
            return Err(Error::Invalid(format!(
                "namespaces[{i}]: {n:?} is not a Kubernetes namespace name (1-63 of a-z, 0-9, '-', alphanumeric at both ends)"
            )));
        }
    }
    let mut out = names.to_vec();
    out.sort();
    out.dedup();
    Ok(out)
}

/// `bpfleet_config` as it holds now (its 16 slots), for List.
fn read_config(pin: &Path) -> Result<Vec<u64>> {
    let h = MapHandle::from_pinned_path(pin)
        .map_err(|e| Error::kernel(format!("opening {}", pin.display()), e))?;
    if h.key_size() != 4 || h.value_size() != 8 {
        return Err(Error::Invalid(format!(
            "{} takes {}-byte keys and {}-byte values, not the u32 -> u64 of bpfleet_gate.h",
            pin.display(),
            h.key_size(),
            h.value_size()
        )));
    }
    (0..h.max_entries())
        .map(|i| {
            let v = h
                .lookup(&i.to_ne_bytes(), MapFlags::ANY)
                .map_err(|e| Error::kernel(format!("reading {}", pin.display()), e))?;
            Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
                .map_or(0, u64::from_ne_bytes))
        })
        .collect()
}
