//! Fault points for the crash-consistency tests (`tests/crash.rs`): named
//! places in Load, Activate, Rollback, Unload and UpdateConfig where a
//! test can have the agent process abort, as a power cut or a `kill -9`
//! would stop it. Each call site is one line, `fault::point("...")`; the
//! names and what each stands for are in [`POINTS`], the one table.
//!
//! Armed by the environment variable `BPFLEET_FAULT=<name>`, read once
//! by [`arm_from_env`] when `serve` starts; an unknown name stops the start
//! with an error. All of it exists only with the cargo feature
//! `fault-injection`: without it [`point`] is an empty inline function, the
//! table is not compiled, and a set `BPFLEET_FAULT` is only warned about.
//! Release builds and `cargo build` leave the feature off.

/// Every fault point: (name, where the agent stops).
#[cfg(feature = "fault-injection")]
pub const POINTS: &[(&str, &str)] = &[
    (
        "load.mid_pins",
        "Load: the object is in the kernel and the revision's programs are pinned; its maps and a new dispatcher are not yet",
    ),
    (
        "load.after_kernel",
        "Load: every pin is made, the state file does not name the revision yet",
    ),
    (
        "load.after_state",
        "Load: the state file names the revision, no reply sent",
    ),
    (
        "activate.after_kernel",
        "Activate: the slots and links run the new revision, the state file still names the old one",
    ),
    (
        "activate.after_state",
        "Activate: the state file names the new revision (written through), no reply sent",
    ),
    (
        "rollback.after_kernel",
        "Rollback: the slots and links run the revision rolled back to, the state file still names the other",
    ),
    (
        "rollback.after_state",
        "Rollback: the state file names the revision rolled back to (written through), no reply sent",
    ),
    (
        "unload.mid_pins",
        "Unload: the first pin is removed (a link first: the hook stopped), the others are not",
    ),
    (
        "unload.after_kernel",
        "Unload: every pin is removed, the state file still names what they held",
    ),
    (
        "unload.after_state",
        "Unload: the state file no longer names it, no reply sent",
    ),
    (
        "config.after_kernel",
        "UpdateConfig: the map entries are written, the namespace filter is not in the state file yet",
    ),
    (
        "config.after_state",
        "UpdateConfig: the state file holds the namespace filter, no reply sent",
    ),
];

/// The environment variable that arms a fault point.
pub const ENV: &str = "BPFLEET_FAULT";

#[cfg(feature = "fault-injection")]
static ARMED: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();

/// Reads [`ENV`] once (later calls keep the first answer). With the
/// feature: an unknown name is an error naming the known ones. Without
/// it: a set variable is warned about and ignored.
pub fn arm_from_env() -> Result<(), String> {
    let wanted = std::env::var(ENV).ok().filter(|v| !v.is_empty());
    arm(wanted.as_deref())
}

#[cfg(feature = "fault-injection")]
fn arm(wanted: Option<&str>) -> Result<(), String> {
    let point = match wanted {
        None => None,
        Some(w) => Some(lookup(w)?),
    };
    let armed = *ARMED.get_or_init(|| point);
    if let Some(p) = armed {
        tracing::warn!(
            fault = p,
            "fault point armed: the agent aborts when it gets there"
        );
    }
    Ok(())
}

#[cfg(not(feature = "fault-injection"))]
fn arm(wanted: Option<&str>) -> Result<(), String> {
    if let Some(w) = wanted {
        tracing::warn!(
            fault = w,
            "{ENV} is set but this build has no fault points (feature fault-injection); ignored"
        );
    }
    Ok(())
}

/// The table's own name for `wanted`, or an error listing the names.
#[cfg(feature = "fault-injection")]
fn lookup(wanted: &str) -> Result<&'static str, String> {
    POINTS
        .iter()
        .map(|(n, _)| *n)
        .find(|n| *n == wanted)
        .ok_or_else(|| {
            let known: Vec<&str> = POINTS.iter().map(|(n, _)| *n).collect();
            format!(
                "{ENV}={wanted}: no such fault point; known: {}",
                known.join(", ")
            )
        })
}

/// Aborts the process when `name` is the armed point. `name` must be in
/// [`POINTS`] (checked in debug builds and by a unit test over the
/// sources).
#[cfg(feature = "fault-injection")]
pub fn point(name: &'static str) {
    debug_assert!(lookup(name).is_ok(), "fault point {name} is not in POINTS");
    if ARMED.get().copied().flatten() == Some(name) {
        eprintln!("bpfleet-agent: fault point {name} reached: aborting");
        std::process::abort();
    }
}

/// Without the feature: nothing.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &'static str) {}

/// [`point`], for a point that stands after something the agent does in
/// the background (a switch's state write): when `name` is armed,
/// `settle` runs first (waits for that work), then the process aborts.
/// `settle` never runs otherwise.
#[cfg(feature = "fault-injection")]
pub fn point_after(name: &'static str, settle: impl FnOnce()) {
    if ARMED.get().copied().flatten() == Some(name) {
        settle();
    }
    point(name);
}

/// Without the feature: nothing (`settle` is not called).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point_after(_name: &'static str, _settle: impl FnOnce()) {}

#[cfg(all(test, feature = "fault-injection"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let e = lookup("load.somewhere").unwrap_err();
        assert!(e.contains("BPFLEET_FAULT=load.somewhere: no such fault point"));
        assert!(e.contains("load.after_kernel, load.after_state"), "{e}");
        assert_eq!(lookup("unload.mid_pins").unwrap(), "unload.mid_pins");
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = POINTS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), POINTS.len());
    }

    /// Every `fault::point("...")` in the crate's sources names a point of
    /// the table, and every point of the table is called somewhere.
    #[test]
    fn the_table_and_the_call_sites_agree() {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("fault.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for call in ["fault::point(\"", "fault::point_after(\""] {
                        for piece in text.split(call).skip(1) {
                            out.push(piece.split('"').next().unwrap().to_string());
                        }
                    }
                }
            }
        }
        let mut called = Vec::new();
        walk(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut called,
        );
        for c in &called {
            assert!(lookup(c).is_ok(), "fault::point({c:?}) is not in POINTS");
        }
        for (n, _) in POINTS {
            assert!(called.iter().any(|c| c == n), "{n} is never called");
        }
    }
}
