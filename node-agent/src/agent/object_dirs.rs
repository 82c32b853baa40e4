//! Where a Load's `object_path` (a TracerProgram's `spec.bytecode.file.path`)
//! may point: files under the directories given with `--object-dir`, after
//! every symlink and `..` is resolved. Nothing is read from a path that
//! escapes them. With no `--object-dir` any absolute path is read, as
//! before the flag existed (the agent warns at start).
//!
//! The decision is pure ([`within`], [`refusal`]) and tested without root;
//! [`resolve`] adds the file system's answer (canonical path, file type),
//! and the caller re-checks what it actually opened with [`opened_within`]
//! so a directory swapped for a symlink between the check and the open is
//! still caught.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The request field a path source arrives in, named in every refusal.
pub const FIELD: &str = "object_path (spec.bytecode.file.path)";

/// Checks the `--object-dir` values at start: each absolute, without `..`.
/// A directory that does not exist yet is allowed (created later, by
/// whoever provisions objects); it simply matches nothing until then.
pub fn check_dirs(dirs: &[PathBuf]) -> Result<()> {
    for d in dirs {
        if !d.is_absolute() || d.components().any(|c| c == Component::ParentDir) {
            return Err(Error::Invalid(format!(
                "--object-dir {}: must be an absolute path without `..`",
                d.display()
            )));
        }
    }
    Ok(())
}

/// Whether `resolved` (a canonical path) lies strictly below one of `dirs`
/// (canonical too), compared component by component: `/objects-evil` is
/// not below `/objects`, and a directory itself is not a file below it.
pub fn within(resolved: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter()
        .any(|d| resolved != d.as_path() && resolved.starts_with(d))
}

/// The refusal of `path`, which resolved to `resolved`, outside `dirs`.
pub fn refusal(path: &Path, resolved: &Path, dirs: &[PathBuf]) -> Error {
    let via = if path == resolved {
        String::new()
    } else {
        format!(" (resolves to {})", resolved.display())
    };
    Error::Denied(format!(
        "{FIELD} {}{via} is outside the allowed object directories [{}] (--object-dir)",
        path.display(),
        list(dirs)
    ))
}

fn list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The canonical forms of `dirs` that exist now (a missing one allows
/// nothing).
fn canonical_dirs(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter()
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .collect()
}

/// Resolves `path` (symlinks, `.` and `..`) and returns its canonical form
/// when it is a regular file below one of `dirs`; with no `dirs`, any
/// regular file. Refused before anything is read: a path that does not
/// resolve (an I/O error, as a missing file always was), one outside the
/// directories, anything but a regular file.
pub fn resolve(path: &Path, dirs: &[PathBuf]) -> Result<PathBuf> {
    // A file that is not there (yet) is an I/O error, as it was before the
    // directories were checked: the operator retries those.
    let resolved = std::fs::canonicalize(path)
        .map_err(|e| Error::io(format!("reading {} ({FIELD})", path.display()), e))?;
    if !dirs.is_empty() && !within(&resolved, &canonical_dirs(dirs)) {
        return Err(refusal(path, &resolved, dirs));
    }
    let meta = std::fs::metadata(&resolved)
        .map_err(|e| Error::io(format!("reading {}", resolved.display()), e))?;
    if !meta.is_file() {
        return Err(not_regular(path));
    }
    Ok(resolved)
}

/// The refusal of a path that is not a regular file.
pub fn not_regular(path: &Path) -> Error {
    Error::Invalid(format!("{FIELD} {}: not a regular file", path.display()))
}

/// Checks the file the caller opened (by the path [`resolve`] returned)
/// is still below `dirs`: `real` is where the open file really is
/// (`/proc/self/fd/N`).
pub fn opened_within(path: &Path, real: &Path, dirs: &[PathBuf]) -> Result<()> {
    if dirs.is_empty() || within(real, &canonical_dirs(dirs)) {
        Ok(())
    } else {
        Err(refusal(path, real, dirs))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn within_compares_whole_components() {
        let dirs = [p("/var/lib/bpfleet/objects")];
        assert!(within(&p("/var/lib/bpfleet/objects/a.o"), &dirs));
        assert!(within(&p("/var/lib/bpfleet/objects/x/y/a.o"), &dirs));
        assert!(!within(&p("/var/lib/bpfleet/objects-evil/a.o"), &dirs));
        assert!(!within(&p("/var/lib/bpfleet/objects"), &dirs));
        assert!(!within(&p("/var/lib/bpfleet/state.json"), &dirs));
        assert!(!within(&p("/etc/shadow"), &dirs));
        assert!(!within(&p("/etc/shadow"), &[]));
        let two = [p("/a"), p("/b/c")];
        assert!(within(&p("/b/c/d.o"), &two));
        assert!(!within(&p("/b/d.o"), &two));
    }

    #[test]
    fn dirs_must_be_absolute_without_parent_components() {
        assert!(check_dirs(&[p("/var/lib/bpfleet/objects")]).is_ok());
        for bad in ["objects", "/var/lib/../../etc"] {
            let e = check_dirs(&[p(bad)]).unwrap_err().to_string();
            assert!(e.contains("--object-dir") && e.contains(bad), "{e}");
        }
    }

    /// An allowed directory holding a file, a subdirectory, a symlink out,
    /// a symlink in, a FIFO; a secret file beside it.
    struct Tree {
        _tmp: tempfile::TempDir,
        allowed: PathBuf,
        outside: PathBuf,
    }

    fn tree() -> Tree {
        let tmp = tempfile::tempdir().unwrap();
        let allowed = tmp.path().join("objects");
        let outside = tmp.path().join("secret");
        std::fs::create_dir_all(allowed.join("sub")).unwrap();
        std::fs::write(allowed.join("ok.o"), b"elf").unwrap();
        std::fs::write(allowed.join("sub/deep.o"), b"elf").unwrap();
        std::fs::write(&outside, b"key").unwrap();
        symlink(&outside, allowed.join("out.o")).unwrap();
        symlink(tmp.path(), allowed.join("up")).unwrap();
        symlink(allowed.join("ok.o"), allowed.join("in.o")).unwrap();
        std::fs::create_dir(tmp.path().join("objects-evil")).unwrap();
        std::fs::write(tmp.path().join("objects-evil/x.o"), b"elf").unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(allowed.join("fifo.o"))
            .status()
            .unwrap();
        assert!(st.success(), "mkfifo");
        Tree {
            _tmp: tmp,
            allowed,
            outside,
        }
    }

    #[test]
    fn files_below_the_directories_resolve() {
        let t = tree();
        let dirs = [t.allowed.clone()];
        let canon = std::fs::canonicalize(&t.allowed).unwrap();
        assert_eq!(
            resolve(&t.allowed.join("ok.o"), &dirs).unwrap(),
            canon.join("ok.o")
        );
        assert_eq!(
            resolve(&t.allowed.join("sub/../sub/deep.o"), &dirs).unwrap(),
            canon.join("sub/deep.o")
        );
        // A symlink that stays inside is followed.
        assert_eq!(
            resolve(&t.allowed.join("in.o"), &dirs).unwrap(),
            canon.join("ok.o")
        );
    }

    #[test]
    fn escapes_are_refused_naming_the_field_and_the_directories() {
        let t = tree();
        let dirs = [t.allowed.clone()];
        let a = t.allowed.display().to_string();
        for escape in [
            t.allowed.join("../secret"),
            t.allowed.join("sub/../../secret"),
            t.allowed.join("out.o"),
            t.allowed.join("up/secret"),
            t.allowed.join("../objects-evil/x.o"),
            t.outside.clone(),
        ] {
            let e = resolve(&escape, &dirs).unwrap_err();
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{escape:?}");
            let m = e.to_string();
            assert!(
                m.contains("spec.bytecode.file.path")
                    && m.contains(&a)
                    && m.contains("--object-dir"),
                "{m}"
            );
        }
        // The directory itself, a FIFO, a missing file: refused too.
        for bad in [t.allowed.clone(), t.allowed.join("sub")] {
            assert!(resolve(&bad, &dirs).is_err(), "{bad:?}");
        }
        let e = resolve(&t.allowed.join("fifo.o"), &dirs).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = resolve(&t.allowed.join("none.o"), &dirs).unwrap_err();
        assert_eq!(e.kind(), "io", "{e}");
        assert!(e.to_string().contains("none.o (object_path"), "{e}");
    }

    #[test]
    fn without_directories_any_regular_file_resolves() {
        let t = tree();
        assert!(resolve(&t.outside, &[]).is_ok());
        assert!(resolve(&t.allowed.join("fifo.o"), &[]).is_err());
    }

    #[test]
    fn a_missing_directory_allows_nothing() {
        let t = tree();
        let dirs = [t.allowed.join("not-yet")];
        assert!(resolve(&t.allowed.join("ok.o"), &dirs).is_err());
    }

    #[test]
    fn what_was_opened_is_checked_again() {
        let t = tree();
        let dirs = [t.allowed.clone()];
        let canon = std::fs::canonicalize(&t.allowed).unwrap();
        assert!(opened_within(&t.allowed.join("ok.o"), &canon.join("ok.o"), &dirs).is_ok());
        let real = std::fs::canonicalize(&t.outside).unwrap();
        let e = opened_within(&t.allowed.join("ok.o"), &real, &dirs).unwrap_err();
        assert!(e.to_string().contains("resolves to"), "{e}");
        assert!(opened_within(&t.allowed.join("ok.o"), &real, &[]).is_ok());
    }
}
