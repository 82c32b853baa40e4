//! Everything that talks to the kernel through libbpf: opening and loading
//! an object with its pins, dispatchers and their slots, attaching, link
//! updates, program and map info, bpffs and BPF stats. No bookkeeping lives here; the agent
//! module decides what to do, this module does it.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bpfleet_proto::v1::{HookKind, SwitchMethod};
use libbpf_rs::{
    Link, MapCore, MapFlags, MapHandle, MapType, ObjectBuilder, PrintLevel, TracepointCategory,
    UprobeOpts,
};

use crate::error::{Error, Result};
use crate::hooks::{expected_prog_type, hook_name, switch_method};
use crate::names::pin_component;
use crate::state::EntryState;

/// Name of the config map written by UpdateConfig (shared by revisions).
pub const CONFIG_MAP: &str = "bpfleet_config";
/// Maps of `bpfleet_gate.h` that every revision of a program shares
/// without naming them persistent: the config map and the TracerPolicy's
/// process and port lists.
pub const SHARED_MAPS: [&str; 3] = [CONFIG_MAP, "bpfleet_pids", "bpfleet_ports"];
/// Name of the per-revision program error counter.
pub const ERRORS_MAP: &str = "bpfleet_errors";
/// Section holding the revision token the agent writes before load.
pub const REVISION_SECTION: &str = ".rodata.bpfleet";
/// bpffs magic number.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

// ---------------------------------------------------------------- libbpf log

static CAPTURE: Mutex<Option<Vec<String>>> = Mutex::new(None);

fn print_cb(level: PrintLevel, msg: String) {
    if let Ok(mut c) = CAPTURE.lock()
        && let Some(buf) = c.as_mut()
    {
        buf.push(msg.clone());
    }
    match level {
        PrintLevel::Warn => tracing::debug!(target: "libbpf", "{}", msg.trim_end()),
        _ => tracing::trace!(target: "libbpf", "{}", msg.trim_end()),
    }
}

/// Routes libbpf's messages through the agent (once per process).
pub fn install_libbpf_log() {
    libbpf_rs::set_print(Some((PrintLevel::Info, print_cb)));
}

struct Capture;

impl Capture {
    fn start() -> Self {
        if let Ok(mut c) = CAPTURE.lock() {
            *c = Some(Vec::new());
        }
        Capture
    }
    fn take(&self) -> Vec<String> {
        CAPTURE
            .lock()
            .ok()
            .and_then(|mut c| c.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(mut c) = CAPTURE.lock() {
            *c = None;
        }
    }
}

/// Turns libbpf's messages around a failed load into a verifier error with
/// the end of the verifier log, when there was a verifier log.
fn verifier_error(lines: &[String]) -> Option<Error> {
    let text: String = lines.concat();
    let begin = text.find("-- BEGIN PROG LOAD LOG --")?;
    let end = text[begin..]
        .find("-- END PROG LOAD LOG --")
        .map_or(text.len(), |e| begin + e);
    let log = &text[begin + "-- BEGIN PROG LOAD LOG --".len()..end];
    let program = text[..begin]
        .rfind("prog '")
        .and_then(|i| text[i + 6..].split('\'').next())
        .unwrap_or("?")
        .to_string();
    let kept: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = kept[kept.len().saturating_sub(20)..].join("\n");
    Some(Error::Verifier { program, log: tail })
}

// ------------------------------------------------------------------- layout

/// Pin of a persistent (shared) map.
pub fn shared_map_pin(prog_dir: &Path, map: &str) -> PathBuf {
    prog_dir.join(format!("_map_{}", pin_component(map)))
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

// --------------------------------------------------------------------- load

/// What to load.
pub struct LoadSpec<'a> {
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
    /// Token of this revision (written into `bpfleet_revision` if the
    /// object has it).
    pub token: u64,
    /// Refuse before load when the maps this revision creates would exceed this.
    pub max_new_map_bytes: u64,
    /// Object name (for the kernel's program names).
    pub name: &'a str,
    /// Key -> program pin of the dispatchers the program already has.
    pub dispatchers: &'a BTreeMap<String, PathBuf>,
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
}

/// Loads and pins one revision; for entries switched by dispatch, makes
/// sure the hook has a dispatcher (attached with an empty slot if new) and
/// that the dispatcher can tail-call the revision's program. Nothing of
/// the revision runs until its programs are put in the slots or links. On
/// failure every pin it created is removed again.
pub fn load(spec: &LoadSpec<'_>) -> Result<Loaded> {
    let mut created: Vec<PathBuf> = Vec::new();
    let res = load_inner(spec, &mut created);
    if res.is_err() {
        for p in created.iter().rev() {
            let _ = std::fs::remove_file(p);
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

fn load_inner(spec: &LoadSpec<'_>, created: &mut Vec<PathBuf>) -> Result<Loaded> {
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
            if let Some(t) = expected_prog_type(hook)
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

    let mut shared: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut new_bytes = 0u64;
    let object_maps: BTreeSet<String> = open
        .maps()
        .map(|m| m.name().to_string_lossy().into_owned())
        .collect();
    for pm in spec.persistent_maps {
        if !object_maps.contains(pm) {
            return Err(Error::Invalid(format!(
                "persistent map {pm} is not in the object"
            )));
        }
    }
    for mut m in open.maps_mut() {
        let name = m.name().to_string_lossy().into_owned();
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
                check_compatible(&name, &m, &pin)?;
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
            "the object's maps need about {new_bytes} bytes, the budget leaves {}",
            spec.max_new_map_bytes
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

    let mut out = Loaded::default();
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
    for mut m in obj.maps_mut() {
        let name = m.name().to_string_lossy().into_owned();
        let memlock = m.query_fdinfo().ok().and_then(|i| i.memlock).unwrap_or(0);
        if let Some(pin) = shared.get(&name) {
            if created.contains(pin) {
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

fn check_compatible(name: &str, m: &libbpf_rs::OpenMapMut<'_>, pin: &Path) -> Result<()> {
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
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::Precondition(format!(
            "map {name} is incompatible with the pinned one at {}: {}",
            pin.display(),
            diffs.join(", ")
        )))
    }
}

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
                .map_err(|er| Error::kernel(what, er))
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

// --------------------------------------------------------------- dispatch

/// Loads a dispatcher for the hook of `e`, pins it and its (empty) slot,
/// attaches it and pins the link. Returns the dispatcher program. Pins it
/// made are pushed to `created`.
fn create_dispatcher(
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
fn check_dispatchable(dispatcher: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> Result<()> {
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
/// dispatcher runs it.
pub fn slot_set(slot: &MapHandle, prog: BorrowedFd<'_>) -> Result<()> {
    slot.update(
        &0u32.to_ne_bytes(),
        &(prog.as_raw_fd() as u32).to_ne_bytes(),
        MapFlags::ANY,
    )
    .map_err(|e| Error::kernel("writing the dispatcher slot", e))
}

/// Empties a dispatcher's slot: the hook runs nothing.
pub fn slot_clear(slot: &MapHandle) -> Result<()> {
    match slot.delete(&0u32.to_ne_bytes()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::kernel("clearing the dispatcher slot", e)),
    }
}

/// Id of the program in a dispatcher's slot, if any.
pub fn slot_prog_id(slot: &MapHandle) -> Option<u32> {
    slot.lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .and_then(|v| v.get(..4).and_then(|b| b.try_into().ok()))
        .map(u32::from_ne_bytes)
}

/// Index of a network interface of this node (the caller's namespace).
fn ifindex(name: &str) -> Result<i32> {
    let c =
        CString::new(name).map_err(|_| Error::Invalid("interface name has a NUL byte".into()))?;
    // SAFETY: c is a valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(Error::Precondition(format!(
            "no interface named {name:?} on this node"
        )));
    }
    Ok(idx as i32)
}

// ------------------------------------------------------------- link update

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

// --------------------------------------------------------------- pins, info

/// Pins an fd at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("path {} has a NUL byte", path.display())))?;
    // SAFETY: fd is open, c is a valid C string.
    let rc = unsafe { libbpf_sys::bpf_obj_pin(fd.as_raw_fd(), c.as_ptr()) };
    if rc < 0 {
        return Err(Error::kernel(
            format!("pinning {}", path.display()),
            libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-rc)),
        ));
    }
    Ok(())
}

/// Opens a pinned object (program, map or link).
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("path {} has a NUL byte", path.display())))?;
    // SAFETY: c is a valid C string.
    let fd = unsafe { libbpf_sys::bpf_obj_get(c.as_ptr()) };
    if fd < 0 {
        return Err(Error::kernel(
            format!("opening pin {}", path.display()),
            libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-fd)),
        ));
    }
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Kernel figures of one program.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProgFigures {
    /// Program id.
    pub id: u32,
    /// Runs since BPF stats were enabled.
    pub run_cnt: u64,
    /// Total run time in ns.
    pub run_time_ns: u64,
    /// Runs skipped by recursion protection.
    pub recursion_misses: u64,
}

/// Reads id and run statistics of a program.
pub fn prog_figures(fd: BorrowedFd<'_>) -> Result<ProgFigures> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len are valid for writes of their sizes.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if rc < 0 {
        return Err(Error::kernel(
            "reading program info",
            libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-rc)),
        ));
    }
    Ok(ProgFigures {
        id: info.id,
        run_cnt: info.run_cnt,
        run_time_ns: info.run_time_ns,
        recursion_misses: info.recursion_misses,
    })
}

/// (link id, id of the program it runs).
pub fn link_ids(fd: BorrowedFd<'_>) -> Result<(u32, u32)> {
    let info = libbpf_rs::query::LinkInfo::from_fd(fd)
        .map_err(|e| Error::kernel("reading link info", e))?;
    Ok((info.id, info.prog_id))
}

/// Sum of the u64 values of all CPUs for key 0 of a per-CPU counter map.
pub fn percpu_sum(map: &MapHandle) -> u64 {
    map.lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .ok()
        .flatten()
        .map_or(0, |vals| {
            vals.iter()
                .filter_map(|v| {
                    v.get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_ne_bytes)
                })
                .sum()
        })
}

/// Kernel memlock of a map.
pub fn map_memory(map: &MapHandle) -> u64 {
    map.query_fdinfo().ok().and_then(|i| i.memlock).unwrap_or(0)
}

/// Makes sure the pin root is on a bpffs: mounts bpffs on /sys/fs/bpf when
/// the root lies below it and it is not mounted yet, then creates the root.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    let sysfs_bpf = Path::new("/sys/fs/bpf");
    if root.starts_with(sysfs_bpf) && !is_bpffs(sysfs_bpf) {
        // SAFETY: all strings are valid C strings; data may be NULL.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "mounting bpffs on /sys/fs/bpf",
                std::io::Error::last_os_error(),
            ));
        }
    }
    std::fs::create_dir_all(root)
        .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
    if !is_bpffs(root) {
        return Err(Error::Precondition(format!(
            "pin root {} is not on a bpf filesystem",
            root.display()
        )));
    }
    Ok(())
}

/// Whether `p` lies on a bpffs.
pub fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs is plain data; zeroed is a valid initial value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st is writable.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Turns on run-time statistics for as long as the returned fd is open.
pub fn enable_stats() -> Result<OwnedFd> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { libbpf_sys::bpf_enable_stats(libbpf_sys::BPF_STATS_RUN_TIME) };
    if fd < 0 {
        return Err(Error::kernel(
            "enabling BPF stats",
            libbpf_rs::Error::from(std::io::Error::from_raw_os_error(-fd)),
        ));
    }
    // SAFETY: fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_log_is_cut_out_of_libbpf_messages() {
        let lines = vec![
            "libbpf: prog 'count_getppid': BPF program load failed: Permission denied\n"
                .to_string(),
            "libbpf: prog 'count_getppid': -- BEGIN PROG LOAD LOG --\n0: R1=ctx()\n".to_string(),
            "12: (79) r1 = *(u64 *)(r0 +0)\nR0 invalid mem access 'map_value_or_null'\n"
                .to_string(),
            "processed 12 insns\n-- END PROG LOAD LOG --\n".to_string(),
        ];
        let Some(Error::Verifier { program, log }) = verifier_error(&lines) else {
            panic!("no verifier error")
        };
        assert_eq!(program, "count_getppid");
        assert!(log.contains("invalid mem access"), "{log}");
        assert!(!log.contains("END PROG"), "{log}");
        assert!(verifier_error(&["libbpf: failed to open\n".to_string()]).is_none());
    }

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
