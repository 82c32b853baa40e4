//! The agent's on-disk state file: what it loaded, under which pins, which
//! revision is active. Written atomically (write to a temporary file in the
//! same directory, then rename). The kernel stays the truth for what runs:
//! on start the agent reconciles this file against the pins, the links and
//! the dispatcher slots.

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

impl StateFile {
    /// Reads the state file; a missing file is an empty state.
    pub fn read(path: &Path) -> Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::io(
                    format!("state file {} is corrupt", path.display()),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                version: STATE_VERSION,
                ..Self::default()
            }),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Writes the state file atomically: temp file beside it, then rename.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("state.json")
        ));
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::io("encoding state", std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        f.write_all(&bytes)
            .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(|e| {
            Error::io(
                format!("renaming {} to {}", tmp.display(), path.display()),
                e,
            )
        })
    }
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
