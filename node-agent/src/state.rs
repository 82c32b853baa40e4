//! The agent's on-disk state file: what it loaded, under which pins, which
//! revision is active. Written atomically (write to a temporary file in the
//! same directory, then rename). The kernel stays the truth for what runs:
//! on start the agent reconciles this file against the pins and the gate.

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
    /// Next gate token to hand out.
    pub next_token: u64,
    /// Revisions by name.
    pub revisions: BTreeMap<String, RevisionState>,
    /// Switchable links shared by the revisions, keyed by entry key.
    pub shared_links: BTreeMap<String, SharedLink>,
    /// Maps shared by the revisions (gate, config, persistent) -> pin.
    #[serde(default)]
    pub shared_maps: BTreeMap<String, PathBuf>,
}

/// One loaded revision.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RevisionState {
    /// Hex sha256 of the object.
    pub sha256: String,
    /// Value of the gate while this revision is active.
    pub token: u64,
    /// Program entries as requested.
    pub entries: Vec<EntryState>,
    /// BPF program name -> pin path.
    pub progs: BTreeMap<String, PathBuf>,
    /// Map name -> pin path (maps of this revision only).
    pub maps: BTreeMap<String, PathBuf>,
    /// Entry key -> link pin (gate-switched entries, attached at load).
    pub links: BTreeMap<String, PathBuf>,
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

/// A link shared by the revisions and switched with bpf_link_update.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SharedLink {
    /// Pin path of the link.
    pub pin: PathBuf,
    /// Hook kind (wire value).
    pub hook: i32,
    /// Hook target.
    pub target: String,
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
    fn corrupt_state_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(StateFile::read(&path).is_err());
    }
}
