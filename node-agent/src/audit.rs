//! JSON-lines audit log: one line per load, activate, rollback, unload and
//! config change, and per TCP call refused for its client identity, with who asked (the caller's certificate identity or unix
//! credentials), what, and the outcome.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::{Error, Result};

/// One audit record.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Milliseconds since the epoch.
    pub ts_ms: u64,
    /// Who asked.
    pub actor: &'a str,
    /// load | activate | rollback | unload | update_config, or the gRPC
    /// method (`/bpfleet.agent.v1.Agent/List`) of a TCP call refused for its
    /// client identity.
    pub action: &'a str,
    /// Program name.
    pub program: &'a str,
    /// Revision, when the action names one.
    pub revision: &'a str,
    /// "ok" or the error kind.
    pub result: &'a str,
    /// Free-form detail (digest, error message, switch time).
    pub detail: &'a str,
}

/// The audit sink: a file opened for append, or nothing.
#[derive(Debug, Default)]
pub struct Audit {
    path: Option<PathBuf>,
    file: Option<std::fs::File>,
}

impl Audit {
    /// Audit into `path` (created if missing).
    pub fn new(path: Option<&Path>) -> Result<Self> {
        let file = match path {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| Error::io(format!("opening audit log {}", p.display()), e))?,
            ),
            None => None,
        };
        Ok(Self {
            path: path.map(Path::to_path_buf),
            file,
        })
    }

    /// Appends one line; an audit failure is logged, never fatal.
    pub fn write(
        &self,
        actor: &str,
        action: &str,
        program: &str,
        revision: &str,
        result: &str,
        detail: &str,
    ) {
        let (Some(path), Some(mut file)) = (&self.path, self.file.as_ref()) else {
            return;
        };
        let rec = Record {
            ts_ms: now_ms(),
            actor,
            action,
            program,
            revision,
            result,
            detail,
        };
        let Ok(mut line) = serde_json::to_vec(&rec) else {
            return;
        };
        line.push(b'\n');
        // One write(2) of a whole line on an O_APPEND file: lines never interleave.
        if let Err(e) = file.write_all(&line) {
            tracing::error!(error = %e, path = %path.display(), "audit write failed");
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_record_is_one_json_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.jsonl");
        let a = Audit::new(Some(&p)).unwrap();
        a.write(
            "cn=operator",
            "load",
            "syscount",
            "v1",
            "ok",
            "sha256 ab\"cd",
        );
        a.write("unix:uid=0", "unload", "syscount", "", "ok", "");
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["actor"], "cn=operator");
        assert_eq!(lines[0]["detail"], "sha256 ab\"cd");
        assert_eq!(lines[1]["action"], "unload");
    }
}
