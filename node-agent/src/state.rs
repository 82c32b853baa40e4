//! The agent's on-disk state file: what it loaded, under which pins, which
//! revision is active. Written atomically and durably: a temporary file in
//! the same directory, fsync, rename over the old one, fsync of the
//! directory; so after a crash or a power cut the file is the old one or
//! the new one. A file that is nonetheless empty, truncated or garbage is
//! detected when read at start ([`StateFile::open`]), kept aside as
//! `<file>.corrupt-<timestamp>` and replaced by an empty state: the agent
//! then re-adopts its pins from the pin root. The kernel stays the truth
//! for what runs: on start the agent reconciles this file against the
//! pins, the links and the dispatcher slots.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Version of the state file format.
pub const STATE_VERSION: u32 = 1;

/// Whole state file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StateFile {
    /// Format version.
    pub version: u32,
    /// Programs by name.
    pub programs: BTreeMap<String, ProgramState>,
}

/// One program with all its revisions.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ProgramState {
    /// Maps shared by every revision, pinned under `<program>/_maps/`.
    pub persistent_maps: Vec<String>,
    /// Active revision, if any.
    pub active: Option<String>,
    /// Previously active revisions, most recent last (for Rollback).
    pub history: Vec<String>,
    /// Next revision token to hand out.
    pub next_token: u64,
    /// Revisions by name.
    pub revisions: BTreeMap<String, RevisionState>,
    /// Switchable links shared by the revisions, keyed by entry key: links
    /// swapped by bpf_link_update and the links of dispatchers.
    pub shared_links: BTreeMap<String, SharedLink>,
    /// Maps shared by the revisions (config, persistent) -> pin.
    #[serde(default)]
    pub shared_maps: BTreeMap<String, PathBuf>,
    /// Kubernetes namespaces whose exchanges the HTTP tracer runtime keeps
    /// (empty: all), set by UpdateConfig.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// The HTTP tracer's redaction and route rules from the program's
    /// TracerPolicy, set by UpdateConfig (None: the agent's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracer_rules: Option<crate::http::rules::PolicyRules>,
    /// The alert rules of the program's TracerPolicy (`spec.alerts`), set
    /// by UpdateConfig (empty: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<crate::alerts::PolicyAlert>,
    /// The TracerPolicy whose budgets the program counts against (its
    /// latest Load's `budget.group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_group: Option<String>,
    /// The CPU budget UpdateConfig set and where the program stands
    /// against it (None: no budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_budget: Option<CpuBudgetState>,
}

/// A program's CPU budget (`maxCpuOverheadPercent` of its TracerPolicy)
/// and the sampling the agent holds for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CpuBudgetState {
    /// Budget, percent of the node's CPU time.
    pub max_cpu_percent: f64,
    /// Whether the agent may lower the program's sampling.
    pub reduce_sampling: bool,
    /// The TracerPolicy the budget comes from.
    pub policy: String,
    /// Slot 8 of `bpfleet_config` as UpdateConfig last wrote it.
    pub requested_ppm: u64,
    /// Slot 8 as the agent holds it (the requested value unless cut).
    pub in_force_ppm: u64,
    /// Where the program stood at the last step.
    #[serde(default)]
    pub state: BudgetState,
    /// CPU share over the last period at the last step, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_percent: Option<f64>,
    /// When the sampling in force or the state last changed, ms since the epoch.
    #[serde(default)]
    pub changed_at_unix_ms: u64,
}

/// One loaded revision.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RevisionState {
    /// Hex sha256 of the object.
    pub sha256: String,
    /// Token written into the revision's `bpfleet_revision` before load.
    pub token: u64,
    /// Program entries as requested.
    pub entries: Vec<EntryState>,
    /// BPF program name -> pin path.
    pub progs: BTreeMap<String, PathBuf>,
    /// Map name -> pin path (maps of this revision only).
    pub maps: BTreeMap<String, PathBuf>,
    /// Load time, milliseconds since the epoch.
    pub loaded_at_unix_ms: u64,
    /// How long loading took.
    pub load_nanos: u64,
    /// Found pinned but not in the state file.
    #[serde(default)]
    pub orphaned: bool,
    /// Kernel-reported map memory of this revision's own maps.
    #[serde(default)]
    pub map_memory_bytes: u64,
    /// BPF program -> run figures of the dispatcher while it ran this
    /// revision's program (tail-called programs have no kernel stats of
    /// their own), summed over the closed active periods.
    #[serde(default)]
    pub dispatched: BTreeMap<String, RunFigures>,
    /// Persistent maps this revision keeps in `maps` (pinned in its own
    /// directory) because a later revision recreated them with another
    /// layout: the old map, with the contents this revision counted into.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub displaced_maps: std::collections::BTreeSet<String>,
    /// What the object declares of its sampling (`BPFLEET_DECLARE_SAMPLING`);
    /// None: it does not honour slot 8, and a CPU budget never writes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<ZeroMeans>,
}

/// Run count and run time.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunFigures {
    /// Runs.
    pub runs: u64,
    /// Run time in ns.
    pub run_ns: u64,
}

/// One program entry: which BPF program attaches where.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EntryState {
    /// BPF program (function) name.
    pub bpf_program: String,
    /// Hook kind (wire value).
    pub hook: i32,
    /// Hook target.
    pub target: String,
    /// Uprobe pid filter.
    pub pid: i32,
}

/// A link shared by the revisions: switched with bpf_link_update, or the
/// link of a dispatcher (then `slot` is set).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SharedLink {
    /// Pin path of the link.
    pub pin: PathBuf,
    /// Hook kind (wire value).
    pub hook: i32,
    /// Hook target.
    pub target: String,
    /// Pin of the dispatcher's program array (dispatchers only).
    #[serde(default)]
    pub slot: Option<PathBuf>,
    /// Pin of the dispatcher program (dispatchers only).
    #[serde(default)]
    pub dispatcher: Option<PathBuf>,
    /// The dispatcher's run figures when its slot last changed: what the
    /// active revision has run since is the difference to now.
    #[serde(default)]
    pub base: RunFigures,
}

/// What 0 in slot 8 means to a program that declares sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZeroMeans {
    /// 0 keeps every event (`BPFLEET_DECLARE_SAMPLING(all)`).
    All,
    /// 0 keeps none of what slot 8 selects (`BPFLEET_DECLARE_SAMPLING(none)`:
    /// the HTTP tracer in its metrics mode, where slot 8 picks the
    /// connections also reported as events).
    None,
}

impl ZeroMeans {
    /// The share per million a slot value stands for.
    pub fn effective(self, raw: u64) -> u64 {
        const ALL_PPM: u64 = 1_000_000;
        match (raw, self) {
            (0, Self::All) => ALL_PPM,
            (0, Self::None) => 0,
            (v, _) => v.min(ALL_PPM),
        }
    }
}

/// Where a program stands against its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetState {
    /// No measurement over a whole period yet.
    #[default]
    Measuring,
    /// Within budget at the requested sampling.
    Within,
    /// Running with less sampling than requested.
    Reduced,
    /// Over budget at the lowest sampling the agent goes to.
    AtFloor,
    /// Over budget, and the program does not declare sampling.
    CannotSample,
    /// Over budget; the budget does not allow reducing sampling.
    NotReducing,
}

impl BudgetState {
    /// The state's name in List, metrics, audit lines and conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Measuring => "measuring",
            Self::Within => "within",
            Self::Reduced => "reduced",
            Self::AtFloor => "at_floor",
            Self::CannotSample => "cannot_sample",
            Self::NotReducing => "not_reducing",
        }
    }
}

/// What [`StateFile::open`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    /// The state to start from (empty when the file was missing or corrupt).
    pub state: StateFile,
    /// When the file was corrupt: why, and where it was kept.
    pub corrupt: Option<Corrupt>,
}

/// A state file that could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Corrupt {
    /// Why it was refused.
    pub reason: String,
    /// Where the refused file was moved (None when moving it failed).
    pub kept: Option<PathBuf>,
}

/// Decodes a state file's bytes. `Err` says why they are not a state file
/// (empty, truncated, not JSON, not the state's shape); a file written by
/// a newer agent is not corrupt and is an error of its own in
/// [`StateFile::open`].
pub fn decode(bytes: &[u8]) -> std::result::Result<StateFile, String> {
    if bytes.is_empty() {
        return Err("empty (0 bytes)".into());
    }
    if bytes.iter().all(|b| *b == 0) {
        return Err(format!("{} zero bytes", bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Eof => "truncated",
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Data => "not a state file",
            serde_json::error::Category::Io => "unreadable",
        };
        format!("{what} ({} bytes): {e}", bytes.len())
    })
}

impl StateFile {
    /// Reads the state file; a missing file is an empty state, a corrupt
    /// one an error (see [`StateFile::open`] for what the agent does).
    pub fn read(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => decode(&bytes).map_err(|e| {
                Error::io(
                    format!("state file {} is corrupt", path.display()),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::empty()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// An empty state of the current version.
    pub fn empty() -> Self {
        Self {
            version: STATE_VERSION,
            ..Self::default()
        }
    }

    /// Opens the state file at the agent's start. Missing: an empty state.
    /// Corrupt (empty, truncated, garbage): logged with the file and the
    /// reason, moved aside to `<file>.corrupt-<timestamp>` for inspection,
    /// and an empty state returned, from which the agent re-adopts its
    /// pins. Unreadable, or written by a newer agent: an error (the agent
    /// does not start rather than lose what it cannot read). A temporary
    /// file left by a write that never finished is removed.
    pub fn open(path: &Path) -> Result<Opened> {
        let tmp = temp_path(path);
        if std::fs::remove_file(&tmp).is_ok() {
            tracing::info!(file = %tmp.display(), "removed an unfinished state write");
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Opened {
                    state: Self::empty(),
                    corrupt: None,
                });
            }
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let reason = match decode(&bytes) {
            Ok(s) if s.version > STATE_VERSION => {
                return Err(Error::Precondition(format!(
                    "state file {} has version {}, this agent knows up to {STATE_VERSION}",
                    path.display(),
                    s.version
                )));
            }
            Ok(state) => {
                return Ok(Opened {
                    state,
                    corrupt: None,
                });
            }
            Err(reason) => reason,
        };
        let aside = corrupt_path(path, std::time::SystemTime::now());
        let kept = match std::fs::rename(path, &aside) {
            Ok(()) => Some(aside),
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot move the corrupt state file aside");
                None
            }
        };
        tracing::error!(
            file = %path.display(),
            reason = %reason,
            kept = ?kept,
            "state file is corrupt; starting from an empty state and re-adopting the pins"
        );
        Ok(Opened {
            state: Self::empty(),
            corrupt: Some(Corrupt { reason, kept }),
        })
    }

    /// Writes the state file atomically and durably: temp file beside it,
    /// fsync, rename, fsync of the directory.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = temp_path(path);
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::io("encoding state", std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        f.write_all(&bytes)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        f.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", tmp.display()), e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })?;
        // The rename is durable once the directory is.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
    }
}

/// `.<name>.tmp` beside `path`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("state.json");
    path.with_file_name(format!(".{name}.tmp"))
}

/// `<path>.corrupt-<UTC timestamp, milliseconds>`.
fn corrupt_path(path: &Path, at: std::time::SystemTime) -> PathBuf {
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{}", utc_stamp(ms)));
    PathBuf::from(name)
}

/// `YYYYMMDDTHHMMSS.mmmZ` of milliseconds since the epoch (UTC).
fn utc_stamp(ms: u128) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = crate::civil::date(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(StateFile::read(&path).unwrap().programs.len(), 0);
        let mut s = StateFile {
            version: STATE_VERSION,
            ..Default::default()
        };
        let mut p = ProgramState {
            active: Some("v1".into()),
            next_token: 2,
            ..Default::default()
        };
        p.revisions.insert(
            "v1".into(),
            RevisionState {
                sha256: "ab".into(),
                token: 1,
                ..Default::default()
            },
        );
        s.programs.insert("syscount".into(), p);
        s.write(&path).unwrap();
        assert_eq!(StateFile::read(&path).unwrap(), s);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn persister_never_lets_an_older_snapshot_win() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut p = Persister::new(path.clone());
        let snap = |active: &str| {
            let mut s = StateFile {
                version: STATE_VERSION,
                ..Default::default()
            };
            s.programs.insert(
                "p".into(),
                ProgramState {
                    active: Some(active.into()),
                    ..Default::default()
                },
            );
            s
        };
        for i in 0..200 {
            p.save_soon(&snap(&format!("soon{i}")));
        }
        p.save_now(&snap("now")).unwrap();
        p.save_soon(&snap("last"));
        drop(p);
        let s = StateFile::read(&path).unwrap();
        assert_eq!(s.programs["p"].active.as_deref(), Some("last"));
    }

    fn sample() -> StateFile {
        let mut s = StateFile::empty();
        let mut p = ProgramState {
            active: Some("v1".into()),
            next_token: 3,
            history: vec!["v0".into()],
            ..Default::default()
        };
        for (r, t) in [("v1", 1), ("v2", 2)] {
            p.revisions.insert(
                r.into(),
                RevisionState {
                    sha256: "ab".repeat(32),
                    token: t,
                    progs: [("count".to_string(), PathBuf::from(format!("/p/{r}/prog")))]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                },
            );
        }
        s.programs.insert("syscount".into(), p);
        s
    }

    #[test]
    fn every_truncation_of_a_state_file_is_detected() {
        let bytes = serde_json::to_vec_pretty(&sample()).unwrap();
        assert_eq!(decode(&bytes).unwrap(), sample());
        for n in 0..bytes.len() {
            let e = decode(&bytes[..n]).unwrap_err();
            assert!(
                e.starts_with("truncated") || e.starts_with("empty") || e.starts_with("not JSON"),
                "{n}: {e}"
            );
        }
    }

    #[test]
    fn empty_zeroed_garbage_and_foreign_files_are_refused_with_a_reason() {
        let cases: [(&[u8], &str); 6] = [
            (b"", "empty (0 bytes)"),
            (&[0; 4096], "4096 zero bytes"),
            (b"\x7fELF\x02\x01", "not JSON"),
            (b"{\"version\": 1, \"programs\": {}} trailing", "not JSON"),
            (b"[1, 2, 3]", "not a state file"),
            (b"{\"programs\": {}}", "not a state file"),
        ];
        for (bytes, want) in cases {
            let e = decode(bytes).unwrap_err();
            assert!(e.starts_with(want), "{bytes:?}: {e}");
        }
    }

    #[test]
    fn open_keeps_a_corrupt_file_aside_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let good = serde_json::to_vec_pretty(&sample()).unwrap();
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        std::fs::write(dir.path().join(".state.json.tmp"), b"{").unwrap();
        let o = StateFile::open(&path).unwrap();
        assert_eq!(o.state, StateFile::empty());
        let c = o.corrupt.unwrap();
        assert!(c.reason.starts_with("truncated"), "{}", c.reason);
        let kept = c.kept.unwrap();
        let name = kept.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("state.json.corrupt-20"), "{name}");
        assert_eq!(std::fs::read(&kept).unwrap(), &good[..good.len() / 2]);
        assert!(!path.exists());
        assert!(!dir.path().join(".state.json.tmp").exists());
        // A good file opens as it is; a missing one as empty.
        sample().write(&path).unwrap();
        let o = StateFile::open(&path).unwrap();
        assert_eq!((o.state, o.corrupt), (sample(), None));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(StateFile::open(&path).unwrap().state, StateFile::empty());
    }

    #[test]
    fn a_newer_version_is_an_error_not_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut s = sample();
        s.version = STATE_VERSION + 1;
        s.write(&path).unwrap();
        let e = StateFile::open(&path).unwrap_err().to_string();
        assert!(e.contains("has version 2"), "{e}");
        assert!(path.exists());
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000.000Z");
        // 2026-12-02 09:50:16.123 UTC.
        assert_eq!(utc_stamp(1_796_205_016_123), "20261202T095016.123Z");
        // 2000-02-29 23:59:59.999 UTC.
        assert_eq!(utc_stamp(951_868_799_999), "20000229T235959.999Z");
    }

    #[test]
    fn corrupt_state_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(StateFile::read(&path).is_err());
    }
}

/// Writes the state file, either at once (load, unload: the caller waits
/// until the pins it made are on record) or soon, on a background thread
/// (activate, rollback: the kernel's links and dispatcher slots are the
/// truth for what is active and the agent reconciles with them on start, so
/// the file may trail by one write without harm, and a switch stays in
/// microseconds).
/// A stale snapshot never overwrites a newer one.
pub struct Persister {
    path: PathBuf,
    shared: std::sync::Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    generation: u64,
}

struct Shared {
    pending: std::sync::Mutex<Pending>,
    wake: std::sync::Condvar,
    /// Generation on disk; held while writing.
    written: std::sync::Mutex<u64>,
}

#[derive(Default)]
struct Pending {
    next: Option<(u64, StateFile)>,
    stop: bool,
}

impl Persister {
    /// A persister for `path`. The writer thread starts with the first
    /// `save_soon`, so a process that drops capabilities after setup starts
    /// it with the reduced set.
    pub fn new(path: PathBuf) -> Self {
        let shared = std::sync::Arc::new(Shared {
            pending: std::sync::Mutex::new(Pending::default()),
            wake: std::sync::Condvar::new(),
            written: std::sync::Mutex::new(0),
        });
        Self {
            path,
            shared,
            thread: None,
            generation: 0,
        }
    }

    /// Writes `state` now.
    pub fn save_now(&mut self, state: &StateFile) -> Result<()> {
        self.generation += 1;
        write_if_newer(&self.path, &self.shared, self.generation, state)
    }

    /// Waits (up to 5 s) until the last state handed to this persister is
    /// on disk.
    pub fn flush(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            match self.shared.written.lock() {
                Ok(w) if *w >= self.generation => return,
                Ok(_) => {}
                Err(_) => return,
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Has `state` written soon.
    pub fn save_soon(&mut self, state: &StateFile) {
        self.generation += 1;
        if self.thread.is_none() {
            let (p, s) = (self.path.clone(), self.shared.clone());
            match std::thread::Builder::new()
                .name("bpfleet-state".into())
                .spawn(move || writer(&p, &s))
            {
                Ok(t) => self.thread = Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "no state writer thread; writing in line");
                    let generation = self.generation;
                    if let Err(e) = write_if_newer(&self.path, &self.shared, generation, state) {
                        tracing::error!(error = %e, "writing the state file failed");
                    }
                    return;
                }
            }
        }
        if let Ok(mut p) = self.shared.pending.lock() {
            p.next = Some((self.generation, state.clone()));
            self.shared.wake.notify_one();
        }
    }
}

fn write_if_newer(path: &Path, shared: &Shared, generation: u64, state: &StateFile) -> Result<()> {
    let mut written = shared
        .written
        .lock()
        .map_err(|_| Error::Precondition("state writer lock poisoned".into()))?;
    if generation > *written {
        state.write(path)?;
        *written = generation;
    }
    Ok(())
}

fn writer(path: &Path, shared: &Shared) {
    loop {
        let next = {
            let Ok(mut p) = shared.pending.lock() else {
                return;
            };
            while p.next.is_none() && !p.stop {
                p = match shared.wake.wait(p) {
                    Ok(p) => p,
                    Err(_) => return,
                };
            }
            match p.next.take() {
                Some(n) => n,
                None => return,
            }
        };
        if let Err(e) = write_if_newer(path, shared, next.0, &next.1) {
            tracing::error!(error = %e, "writing the state file failed");
        }
    }
}

impl Drop for Persister {
    /// Flushes what is pending, then stops the writer.
    fn drop(&mut self) {
        if let Ok(mut p) = self.shared.pending.lock() {
            p.stop = true;
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
