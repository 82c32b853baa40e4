//! Validation of the names that become paths under the pin root, and the
//! number that names a program's revision in BPF log records.

use crate::error::{Error, Result};

/// Longest program, revision or map name accepted.
pub const MAX_NAME: usize = 63;

/// Checks a program or revision name: 1..=63 characters of `[A-Za-z0-9_-]`,
/// not starting with `_` (reserved for the agent's own pins such as
/// `_gate`). bpffs refuses dots in every name, so they are refused here.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Invalid(format!("{what} name is empty")));
    }
    if name.len() > MAX_NAME {
        return Err(Error::Invalid(format!(
            "{what} name is {} bytes long, at most {MAX_NAME} allowed",
            name.len()
        )));
    }
    if name.starts_with('_') || name.starts_with('.') {
        return Err(Error::Invalid(format!(
            "{what} name {name:?} starts with '{}', which is reserved",
            &name[..1]
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
    {
        return Err(Error::Invalid(format!(
            "{what} name {name:?} contains {c:?}; allowed are letters, digits, '_', '-' (bpffs refuses dots)"
        )));
    }
    Ok(())
}

/// The node-wide number a revision's log records carry
/// (`bpfleet_log_origin` in `bpfleet_log.h`): FNV-1a (64 bits) of the
/// program name, a NUL and the revision name, never 0 (0 is an object
/// loaded by someone else). Revision tokens are numbered per program, so
/// they cannot tell programs apart in the node's one ring; this can, and
/// needs no state: the agent computes it again from the names after a
/// restart.
pub fn log_origin(program: &str, revision: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in program.bytes().chain([0]).chain(revision.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.max(1)
}

/// Turns a hook target (e.g. `syscalls/sys_enter_write`, `/usr/bin/x:main`)
/// into a file name usable as a pin: every byte outside `[A-Za-z0-9._-]`
/// becomes `_` (bpffs refuses dots), and the result is bounded in length.
pub fn pin_component(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(120);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["syscount", "v1", "http-tracer-v2_3", "A9"] {
            assert!(check_name("program", n).is_ok(), "{n}");
        }
    }

    #[test]
    fn refuses_path_tricks_and_reserved_names() {
        for n in [
            "",
            "..",
            "a/b",
            "_gate",
            ".hidden",
            "v1.2",
            "x y",
            "ü",
            &"a".repeat(64),
        ] {
            let e = check_name("revision", n).unwrap_err();
            assert!(matches!(e, Error::Invalid(_)), "{n}: {e}");
        }
    }

    #[test]
    fn pin_component_is_flat() {
        assert_eq!(
            pin_component("syscalls/sys_enter_write"),
            "syscalls_sys_enter_write"
        );
        assert_eq!(
            pin_component("/usr/lib/libssl.so.3:SSL_write"),
            "_usr_lib_libssl_so_3_SSL_write"
        );
        assert_eq!(pin_component(".."), "__");
    }
}
