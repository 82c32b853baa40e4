//! Loading one revision: opening the object, checking its programs and
//! maps against the request (program types, persistent map layouts, the
//! map budget), writing the revision token, loading with the verifier log
//! captured, pinning programs and maps, and making sure each dispatched
//! hook has a dispatcher the revision can run behind. On failure every pin
//! it created is removed again. What to load is decided by the agent.
//!
//! An object declaring `bpfleet_log` (`bpfleet_log.h`) gets the node's log
//! ring: the one pinned at [`ObjectLoad::log_ring`], or a new one of
//! [`ObjectLoad::log_ring_bytes`] pinned there. Whatever size the object
//! declares, it takes the node ring's; the ring counts in no program's
//! map budget (its size is the agent's choice, not the program's).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use std::os::unix::ffi::OsStrExt;

use bpfleet_proto::v1::SwitchMethod;
use libbpf_rs::{MapCore, MapHandle, MapType, ObjectBuilder};

use super::dispatch::{check_dispatchable, create_dispatcher};
use super::layout::{
    DispatcherPins, LOG_MAP, LOG_SECTION, REVISION_SECTION, SHARED_MAPS, dispatcher_pin,
    displaced_map_pin, entry_keys, hook_of, shared_link_pin, shared_map_pin, slot_pin,
};
use super::obj_get;
use super::probe::prog_type_of;
use super::verifier::{Capture, verifier_error};
use crate::error::{Error, Result};
use crate::hooks::{hook_name, switch_method};
use crate::names::pin_component;
use crate::state::EntryState;

/// What to load.
pub struct ObjectLoad<'a> {
    /// ELF bytes.
    pub bytes: &'a [u8],
    /// `<pin-root>/<program>`.
    pub prog_dir: &'a Path,
    /// `<pin-root>/<program>/<revision>`.
    pub rev_dir: &'a Path,
    /// Entries (validated: hook known and supported).
    pub entries: &'a [EntryState],
    /// Maps shared across revisions.
    pub persistent_maps: &'a [String],
    /// Persistent maps recreated when the pinned one has another layout:
    /// the old pin moves to [`displaced_map_pin`] (the agent then pins it
    /// where the revisions using it keep it) and the object gets a fresh
    /// map at the shared pin.
    pub recreate_maps: &'a [String],
    /// Token of this revision (written into `bpfleet_revision` if the
    /// object has it).
    pub token: u64,
    /// Written into `bpfleet_log_origin` if the object has it: the
    /// node-wide name of this program and revision in its log records.
    pub log_origin: u64,
    /// Pin of the node's log ring ([`super::layout::log_ring_pin`]).
    pub log_ring: &'a Path,
    /// Size of the node's log ring when this load creates it (a power of
    /// two, a multiple of the page size).
    pub log_ring_bytes: u32,
    /// Refuse before load when the maps this revision creates would exceed this.
    pub max_new_map_bytes: u64,
    /// The budget that sets `max_new_map_bytes`, for the refusal.
    pub room_by: &'a str,
    /// Object name (for the kernel's program names).
    pub name: &'a str,
    /// Key -> program pin of the dispatchers the program already has.
    pub dispatchers: &'a BTreeMap<String, PathBuf>,
    /// Ids of the helpers this node refuses (`--deny-helper`): a program
    /// to load that calls one is refused as a kernel lacking the helper
    /// would, before anything is created.
    pub denied_helpers: &'a BTreeSet<u32>,
}

/// What a load produced.
#[derive(Debug, Default)]
pub struct Loaded {
    /// BPF program -> pin.
    pub progs: BTreeMap<String, PathBuf>,
    /// Revision-local map -> pin.
    pub maps: BTreeMap<String, PathBuf>,
    /// Dispatchers this load created, by key.
    pub dispatchers: BTreeMap<String, DispatcherPins>,
    /// Memory of the maps this revision created (kernel memlock).
    pub map_memory_bytes: u64,
    /// Persistent maps recreated because the pinned one differed.
    pub recreated: Vec<Recreated>,
    /// The object uses the node's log ring (created by this load or not).
    pub log_ring: bool,
    /// What the object declares of its sampling (`BPFLEET_DECLARE_SAMPLING`).
    pub sampling: Option<crate::state::ZeroMeans>,
}

/// A persistent map this load recreated.
#[derive(Debug, Clone, PartialEq)]
pub struct Recreated {
    /// Map name.
    pub map: String,
    /// Where the old map is pinned now ([`displaced_map_pin`]).
    pub old_pin: PathBuf,
    /// Kernel id of the old map.
    pub old_id: u32,
    /// The differences, pinned -> this revision.
    pub diff: String,
}

/// Loads and pins one revision; for entries switched by dispatch, makes
/// sure the hook has a dispatcher (attached with an empty slot if new) and
/// that the dispatcher can tail-call the revision's program. Nothing of
/// the revision runs until its programs are put in the slots or links. On
/// failure every pin it created is removed again.
pub fn load(spec: &ObjectLoad<'_>) -> Result<Loaded> {
    let mut created: Vec<PathBuf> = Vec::new();
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let res = load_inner(spec, &mut created, &mut moved);
    if res.is_err() {
        for p in created.iter().rev() {
            let _ = std::fs::remove_file(p);
        }
        // Old pins of recreated maps go back where they were.
        for (from, to) in moved.iter().rev() {
            if let Err(e) = std::fs::rename(to, from) {
                tracing::error!(from = %to.display(), to = %from.display(), error = %e, "cannot put a persistent map's pin back");
            }
        }
        let _ = std::fs::remove_dir(spec.rev_dir);
    }
    res
}

fn map_estimate(t: MapType, key: u32, value: u32, max: u32) -> u64 {
    let per = u64::from(key) + u64::from(value);
    let n = u64::from(max);
    if t == MapType::RingBuf || t == MapType::UserRingBuf {
        return n;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get() as u64);
    if t.is_percpu() {
        per.saturating_mul(n).saturating_mul(cpus)
    } else {
        per.saturating_mul(n)
    }
}

fn load_inner(
    spec: &ObjectLoad<'_>,
    created: &mut Vec<PathBuf>,
    moved: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<Loaded> {
    let mut builder = ObjectBuilder::default();
    builder
        .name(spec.name)
        .map_err(|e| Error::kernel("naming object", e))?;
    let mut open = builder
        .open_memory(spec.bytes)
        .map_err(|e| Error::Invalid(format!("object is not a loadable BPF ELF: {e}")))?;

    // Programs: every entry must name one of the right type; the others are
    // not loaded.
    let wanted: BTreeSet<&str> = spec
        .entries
        .iter()
        .map(|e| e.bpf_program.as_str())
        .collect();
    let mut found = BTreeSet::new();
    for mut p in open.progs_mut() {
        let name = p.name().to_string_lossy().into_owned();
        if let Some(e) = spec.entries.iter().find(|e| e.bpf_program == name) {
            let hook = hook_of(e);
            if let Some(t) = prog_type_of(hook)
                && p.prog_type() != t
            {
                return Err(Error::Invalid(format!(
                    "program {name} is of type {:?} (section {}), hook {} needs {t:?}",
                    p.prog_type(),
                    p.section().to_string_lossy(),
                    hook_name(hook)
                )));
            }
            found.insert(name);
        } else {
            p.set_autoload(false);
        }
    }
    if let Some(missing) = wanted.iter().find(|w| !found.contains(**w)) {
        return Err(Error::Invalid(format!(
            "object has no BPF program named {missing}"
        )));
    }
    // Helpers denied on this node: refused before any pin or directory.
    for p in open.progs().filter(|p| p.autoload()) {
        super::helpers::check_denied(&p.name().to_string_lossy(), p.insns(), spec.denied_helpers)?;
    }

    let mut shared: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut new_bytes = 0u64;
    let object_maps: BTreeSet<String> = open
        .maps()
        .map(|m| m.name().to_string_lossy().into_owned())
        .collect();
    for pm in spec.persistent_maps {
        if pm == LOG_MAP {
            return Err(Error::Invalid(format!(
                "persistent_maps: {LOG_MAP} is the node's log ring (bpfleet_log.h), shared by \
                 every program; it cannot be one program's persistent map"
            )));
        }
        if !object_maps.contains(pm) {
            return Err(Error::Invalid(format!(
                "persistent map {pm} is not in the object"
            )));
        }
    }
    let shapes = super::btf::object_shapes(&open);
    let sampling = super::btf::declared_sampling(&open);
    // Recreations decided before anything is moved: a refusal of another
    // map must leave every pin where it was.
    let mut recreate: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
    for m in open.maps() {
        let name = m.name().to_string_lossy().into_owned();
        if !spec.persistent_maps.contains(&name) || SHARED_MAPS.contains(&name.as_str()) {
            continue;
        }
        let pin = shared_map_pin(spec.prog_dir, &name);
        if !pin.exists() {
            continue;
        }
        let diffs = map_differences(&m, shapes.get(&name), &pin)?;
        if diffs.is_empty() {
            continue;
        }
        if !spec.recreate_maps.contains(&name) {
            return Err(incompatible(&name, &pin, &diffs));
        }
        let old = displaced_map_pin(spec.prog_dir, &name);
        if old.exists() {
            return Err(Error::Precondition(format!(
                "map {name} is to be recreated but {} is still pinned from an earlier recreation; restart the agent to sort it out",
                old.display()
            )));
        }
        recreate.insert(name, (old, diffs.join("; ")));
    }
    let mut recreated = Vec::new();
    for (name, (old, diff)) in recreate {
        let pin = shared_map_pin(spec.prog_dir, &name);
        let old_id = super::pinned_map_id(&pin)?;
        std::fs::rename(&pin, &old)
            .map_err(|e| Error::io(format!("moving {} aside", pin.display()), e))?;
        moved.push((pin, old.clone()));
        recreated.push(Recreated {
            map: name,
            old_pin: old,
            old_id,
            diff,
        });
    }
    let mut log_ring = false;
    for mut m in open.maps_mut() {
        let name = m.name().to_string_lossy().into_owned();
        if name == LOG_MAP {
            use_log_ring(&mut m, spec, created)?;
            shared.insert(name, spec.log_ring.to_path_buf());
            log_ring = true;
            continue;
        }
        if name.ends_with(LOG_SECTION) {
            let Some(v) = m.initial_value_mut().filter(|v| v.len() >= 8) else {
                return Err(Error::Invalid(format!(
                    "section {LOG_SECTION} must hold the u64 bpfleet_log_origin (bpfleet_log.h)"
                )));
            };
            v[..8].copy_from_slice(&spec.log_origin.to_ne_bytes());
        }
        let pin = if SHARED_MAPS.contains(&name.as_str()) || spec.persistent_maps.contains(&name) {
            Some(shared_map_pin(spec.prog_dir, &name))
        } else {
            None
        };
        if name.ends_with(REVISION_SECTION) {
            let bytes = spec.token.to_ne_bytes();
            let Some(v) = m.initial_value_mut() else {
                return Err(Error::Invalid(format!(
                    "section {REVISION_SECTION} has no data"
                )));
            };
            if v.len() < 8 {
                return Err(Error::Invalid(format!(
                    "section {REVISION_SECTION} must hold the u64 bpfleet_revision, it has {} bytes",
                    v.len()
                )));
            }
            v[..8].copy_from_slice(&bytes);
        }
        match pin {
            Some(pin) if pin.exists() => {
                let diffs = map_differences(&m, shapes.get(&name), &pin)?;
                if !diffs.is_empty() {
                    return Err(incompatible(&name, &pin, &diffs));
                }
                m.set_pin_path(&pin)
                    .map_err(|e| Error::kernel(format!("reusing {}", pin.display()), e))?;
                shared.insert(name, pin);
            }
            Some(pin) => {
                new_bytes +=
                    map_estimate(m.map_type(), m.key_size(), m.value_size(), m.max_entries());
                m.set_pin_path(&pin)
                    .map_err(|e| Error::kernel(format!("pinning {}", pin.display()), e))?;
                // libbpf creates and pins it during load.
                created.push(pin.clone());
                shared.insert(name, pin);
            }
            None => {
                new_bytes +=
                    map_estimate(m.map_type(), m.key_size(), m.value_size(), m.max_entries());
            }
        }
    }
    if new_bytes > spec.max_new_map_bytes {
        return Err(Error::Budget(format!(
            "the object's maps need about {new_bytes} bytes, {} leave {}",
            spec.room_by, spec.max_new_map_bytes
        )));
    }

    std::fs::create_dir(spec.rev_dir)
        .map_err(|e| Error::io(format!("creating {}", spec.rev_dir.display()), e))?;

    let capture = Capture::start();
    let mut obj = match open.load() {
        Ok(o) => o,
        Err(e) => {
            let lines = capture.take();
            return Err(
                verifier_error(&lines).unwrap_or_else(|| Error::kernel("loading object", e))
            );
        }
    };
    drop(capture);

    let mut out = Loaded {
        recreated,
        log_ring,
        sampling,
        ..Loaded::default()
    };
    for mut p in obj.progs_mut() {
        if !p.autoload() {
            continue;
        }
        let name = p.name().to_string_lossy().into_owned();
        let pin = spec.rev_dir.join(format!("prog_{}", pin_component(&name)));
        p.pin(&pin)
            .map_err(|e| Error::kernel(format!("pinning program {}", pin.display()), e))?;
        created.push(pin.clone());
        out.progs.insert(name, pin);
    }
    crate::fault::point("load.mid_pins");
    for mut m in obj.maps_mut() {
        let name = m.name().to_string_lossy().into_owned();
        let memlock = m.query_fdinfo().ok().and_then(|i| i.memlock).unwrap_or(0);
        if let Some(pin) = shared.get(&name) {
            if created.contains(pin) && name != LOG_MAP {
                out.map_memory_bytes += memlock;
            }
            continue;
        }
        let pin = spec.rev_dir.join(format!("map_{}", pin_component(&name)));
        m.pin(&pin)
            .map_err(|e| Error::kernel(format!("pinning map {}", pin.display()), e))?;
        created.push(pin.clone());
        out.maps.insert(name, pin);
        out.map_memory_bytes += memlock;
    }
    for (e, key) in spec.entries.iter().zip(entry_keys(spec.entries)) {
        if switch_method(hook_of(e)) != SwitchMethod::Dispatch {
            continue;
        }
        let prog = obj
            .progs()
            .find(|p| p.name().as_bytes() == e.bpf_program.as_bytes())
            .ok_or_else(|| {
                Error::Invalid(format!("object has no BPF program named {}", e.bpf_program))
            })?;
        let disp_prog = match spec.dispatchers.get(&key) {
            Some(pin) => obj_get(pin)?,
            None => {
                let pins = DispatcherPins {
                    link: shared_link_pin(spec.prog_dir, &key),
                    slot: slot_pin(spec.prog_dir, &key),
                    prog: dispatcher_pin(spec.prog_dir, &key),
                };
                let d = create_dispatcher(e, &pins, created)?;
                out.dispatchers.insert(key.clone(), pins);
                d
            }
        };
        check_dispatchable(disp_prog.as_fd(), prog.as_fd()).map_err(|er| {
            Error::Precondition(format!(
                "program {} cannot run behind the dispatcher of {}: {er}",
                e.bpf_program, key
            ))
        })?;
    }
    Ok(out)
}

/// The kernel tags of the entry programs of an object, from a load that
/// pins nothing and leaves nothing behind (its programs and maps go when
/// this returns). Two loads of the same code have the same tags: the
/// agent compares them with pinned programs it found without a record.
pub fn program_tags(
    bytes: &[u8],
    name: &str,
    entries: &[EntryState],
) -> Result<BTreeMap<String, [u8; 8]>> {
    let mut builder = ObjectBuilder::default();
    builder
        .name(name)
        .map_err(|e| Error::kernel("naming object", e))?;
    let mut open = builder
        .open_memory(bytes)
        .map_err(|e| Error::Invalid(format!("object is not a loadable BPF ELF: {e}")))?;
    for mut p in open.progs_mut() {
        let wanted = entries
            .iter()
            .any(|e| p.name().as_bytes() == e.bpf_program.as_bytes());
        p.set_autoload(wanted);
    }
    let obj = open
        .load()
        .map_err(|e| Error::kernel("loading object (to compare)", e))?;
    let mut tags = BTreeMap::new();
    for p in obj.progs() {
        if !p.autoload() {
            continue;
        }
        let f = super::prog_figures(p.as_fd())?;
        tags.insert(p.name().to_string_lossy().into_owned(), f.tag);
    }
    Ok(tags)
}

/// Points the object's `bpfleet_log` at the node's log ring: the pinned
/// one (its size taken over), or a new one of the agent's size that libbpf
/// creates and pins during load (recorded in `created`, so a failed load
/// removes it again).
fn use_log_ring(
    m: &mut libbpf_rs::OpenMapMut<'_>,
    spec: &ObjectLoad<'_>,
    created: &mut Vec<PathBuf>,
) -> Result<()> {
    if m.map_type() != MapType::RingBuf {
        return Err(Error::Invalid(format!(
            "map {LOG_MAP} is the node's log ring (bpfleet_log.h) and must be a ring buffer; \
             the object declares a {:?}",
            m.map_type()
        )));
    }
    let pin = spec.log_ring;
    let size = if pin.exists() {
        let pinned = MapHandle::from_pinned_path(pin)
            .map_err(|e| Error::kernel(format!("opening the log ring {}", pin.display()), e))?;
        if pinned.map_type() != MapType::RingBuf {
            return Err(Error::Precondition(format!(
                "{} is not a ring buffer ({:?}); remove it so the agent makes the node's log ring again",
                pin.display(),
                pinned.map_type()
            )));
        }
        pinned.max_entries()
    } else {
        created.push(pin.to_path_buf());
        spec.log_ring_bytes
    };
    m.set_max_entries(size)
        .map_err(|e| Error::kernel("sizing bpfleet_log", e))?;
    m.set_pin_path(pin)
        .map_err(|e| Error::kernel(format!("pinning the log ring at {}", pin.display()), e))
}

/// What keeps the map pinned at `pin` from being reused for this object's
/// map: type, sizes or (both having BTF) the shape of key or value: a
/// field added, removed, moved, resized or retyped, listed each. Without
/// BTF on either side only type and sizes are compared. Empty: reusable.
fn map_differences(
    m: &libbpf_rs::OpenMap<'_>,
    shapes: Option<&super::btf::MapShapes>,
    pin: &Path,
) -> Result<Vec<String>> {
    let pinned = MapHandle::from_pinned_path(pin)
        .map_err(|e| Error::kernel(format!("opening pinned map {}", pin.display()), e))?;
    let mut diffs = Vec::new();
    if pinned.map_type() != m.map_type() {
        diffs.push(format!(
            "type {:?} vs pinned {:?}",
            m.map_type(),
            pinned.map_type()
        ));
    }
    for (what, new, old) in [
        ("key_size", m.key_size(), pinned.key_size()),
        ("value_size", m.value_size(), pinned.value_size()),
        ("max_entries", m.max_entries(), pinned.max_entries()),
    ] {
        if new != old {
            diffs.push(format!("{what} {new} vs pinned {old}"));
        }
    }
    if let (Some(new), Some(old)) = (shapes, super::btf::pinned_shapes(&pinned)) {
        diffs.extend(crate::map_layout::diff("key", &old.key, &new.key));
        diffs.extend(crate::map_layout::diff("value", &old.value, &new.value));
    }
    Ok(diffs)
}

/// The refusal of a map that differs from its pinned one.
fn incompatible(name: &str, pin: &Path, diffs: &[String]) -> Error {
    Error::Precondition(format!(
        "map {name} is incompatible with the pinned one at {} (pinned -> this revision): {}",
        pin.display(),
        diffs.join("; ")
    ))
}
