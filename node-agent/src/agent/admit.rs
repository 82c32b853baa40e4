//! Admission of a checked Load request, in one pass and this order:
//! digest, idempotency by (program, revision), trust (signature), node
//! support and capabilities of every entry, budgets. A revision of the same
//! name pinned without a record (an orphan) gets the trust and support
//! checks, then is left to `load` to claim or replace. A pure function of the
//! request, the object's bytes, what the agent holds, and the node's
//! support, capabilities, budgets and verifiers: it is unit-tested without
//! root and without bpffs. It decides; `load` acts.

use crate::error::Result;
use crate::hooks::{NodeSupport, check_caps};
use crate::kernel::hook_of;
use crate::state::{ProgramState, StateFile};
use crate::trust::{Verifiers, check_digest};

use super::budget::Budgets;
use super::request::LoadCmd;

/// What the agent holds, as admission reads it.
pub struct Held<'a> {
    /// Programs and revisions.
    pub state: &'a StateFile,
    /// Map memory one program uses now (measured on demand; only asked
    /// for once the cheaper checks passed).
    pub map_bytes: &'a dyn Fn(&ProgramState) -> u64,
}

/// The node's side of admission.
pub struct Node<'a> {
    pub support: &'a NodeSupport,
    /// The agent's effective capability set.
    pub caps: u64,
    pub budgets: &'a Budgets,
    pub verifiers: &'a Verifiers,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The same (program, revision, digest) is loaded: nothing to do.
    AlreadyLoaded,
    /// Load it.
    Load(Admitted),
    /// The revision is pinned without a record (adopted as an orphan
    /// after a crash or a lost state file): the object passed every check
    /// but the budgets (the orphan already holds its place); the agent
    /// claims the orphan when it runs this object's code, or replaces it.
    Orphan {
        /// The object's digest (hex).
        sha256: String,
    },
}

/// What the load of an admitted revision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The object's digest (hex).
    pub sha256: String,
    /// Gate token of the new revision.
    pub token: u64,
    /// Map memory the revision may create.
    pub map_room: u64,
    /// The budget that sets `map_room`, for the refusal.
    pub room_by: String,
    /// Whether the program is new on this node.
    pub new_program: bool,
}

/// The object's signature: the request's blob signature when it has one,
/// else the image signature a trusted key verified when it was fetched,
/// else unsigned (refused unless allowed).
fn check_trust(cmd: &LoadCmd, bytes: &[u8], verifiers: &Verifiers) -> Result<()> {
    if cmd.signature.trim().is_empty() && cmd.verified_by.is_some() {
        return Ok(());
    }
    verifiers.check(bytes, &cmd.signature).map(|_| ())
}

/// Admits or refuses `cmd` with object `bytes`.
pub fn admit(cmd: &LoadCmd, bytes: &[u8], held: &Held<'_>, node: &Node<'_>) -> Result<Admission> {
    let sha = check_digest(bytes, &cmd.sha256)?;
    let existing = held.state.programs.get(&cmd.program);
    if let Some(r) = existing.and_then(|p| p.revisions.get(&cmd.revision)) {
        if r.orphaned {
            check_trust(cmd, bytes, node.verifiers)?;
            for e in &cmd.entries {
                let h = hook_of(e);
                node.support.check(h)?;
                check_caps(h, node.caps)?;
            }
            return Ok(Admission::Orphan { sha256: sha });
        }
        if r.sha256 == sha {
            return Ok(Admission::AlreadyLoaded);
        }
        return Err(crate::error::Error::AlreadyExists(format!(
            "revision {}/{} is loaded with digest {}; revisions are immutable (this object is {sha})",
            cmd.program, cmd.revision, r.sha256
        )));
    }
    check_trust(cmd, bytes, node.verifiers)?;
    for e in &cmd.entries {
        let h = hook_of(e);
        node.support.check(h)?;
        check_caps(h, node.caps)?;
    }
    node.budgets.check_counts(
        &cmd.program,
        held.state.programs.len(),
        existing.map(|p| p.revisions.len()),
    )?;
    // The TracerPolicy's budgets: its other programs on this node.
    let members: Vec<(&String, &ProgramState)> = match &cmd.group {
        Some(g) => held
            .state
            .programs
            .iter()
            .filter(|(n, p)| **n != cmd.program && p.budget_group.as_deref() == Some(&g.name))
            .collect(),
        None => Vec::new(),
    };
    if let Some(g) = &cmd.group
        && let Some(max) = g.max_programs
        && members.len() >= max
    {
        let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
        return Err(crate::error::Error::Budget(format!(
            "TracerPolicy {}'s budget maxPrograms is {max}: {} of its programs are loaded on this node ({})",
            g.name,
            members.len(),
            names.join(", ")
        )));
    }
    let used_prog = existing.map_or(0, |p| (held.map_bytes)(p));
    let used_total: u64 = held.state.programs.values().map(held.map_bytes).sum();
    let mut map_room = node
        .budgets
        .map_room(cmd.max_map_bytes, used_prog, used_total);
    let mut room_by = "the program's and the agent's map memory budgets".to_string();
    if let Some(g) = &cmd.group
        && let Some(max) = g.max_map_bytes
    {
        let used: u64 = used_prog
            + members
                .iter()
                .map(|(_, p)| (held.map_bytes)(p))
                .sum::<u64>();
        let room = max.saturating_sub(used);
        if room < map_room {
            map_room = room;
            room_by = format!(
                "TracerPolicy {}'s budget maxMapMemory ({max} bytes for its programs on this node, {used} in use)",
                g.name
            );
        }
    }
    Ok(Admission::Load(Admitted {
        sha256: sha,
        token: existing.map_or(1, |p| p.next_token.max(1)),
        map_room,
        room_by,
        new_program: existing.is_none(),
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::agent::request::ObjectSource;
    use crate::error::Error;
    use crate::hooks::caps;
    use crate::state::{EntryState, RevisionState};
    use crate::trust::sha256_hex;
    use bpfleet_proto::v1::HookKind;

    const OBJ: &[u8] = b"an object";
    const ALL_CAPS: u64 = (1 << caps::BPF) | (1 << caps::PERFMON) | (1 << caps::NET_ADMIN);

    fn cmd(program: &str, revision: &str, hook: HookKind) -> LoadCmd {
        LoadCmd {
            program: program.into(),
            revision: revision.into(),
            entries: vec![EntryState {
                bpf_program: "f".into(),
                hook: hook as i32,
                target: "t".into(),
                pid: 0,
            }],
            persistent_maps: Vec::new(),
            recreate_maps: Vec::new(),
            source: ObjectSource::Bytes(OBJ.to_vec()),
            sha256: sha256_hex(OBJ),
            signature: String::new(),
            verified_by: None,
            max_map_bytes: None,
            group: None,
        }
    }

    /// (revision, object) pairs of one program.
    type Revisions<'a> = &'a [(&'a str, &'a [u8])];

    fn state(programs: &[(&str, Revisions<'_>)]) -> StateFile {
        let mut s = StateFile::default();
        for (p, revs) in programs {
            let mut ps = ProgramState {
                next_token: 7,
                ..Default::default()
            };
            for (r, obj) in *revs {
                ps.revisions.insert(
                    r.to_string(),
                    RevisionState {
                        sha256: sha256_hex(obj),
                        map_memory_bytes: 100,
                        ..Default::default()
                    },
                );
            }
            s.programs.insert(p.to_string(), ps);
        }
        s
    }

    struct Fixture {
        support: NodeSupport,
        budgets: Budgets,
        verifiers: Verifiers,
        caps: u64,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                support: NodeSupport::from_reasons([
                    (HookKind::Tracepoint, None),
                    (HookKind::Xdp, None),
                    (HookKind::Kprobe, Some("no kprobes here".into())),
                ]),
                budgets: Budgets {
                    max_programs: 2,
                    max_revisions: 2,
                    max_map_bytes_per_program: 1000,
                    max_map_bytes_total: 1500,
                },
                verifiers: Verifiers::new(&[], true).unwrap(),
                caps: ALL_CAPS,
            }
        }

        fn admit(&self, c: &LoadCmd, s: &StateFile) -> Result<Admission> {
            let bytes = |p: &ProgramState| p.revisions.values().map(|r| r.map_memory_bytes).sum();
            admit(
                c,
                OBJ,
                &Held {
                    state: s,
                    map_bytes: &bytes,
                },
                &Node {
                    support: &self.support,
                    caps: self.caps,
                    budgets: &self.budgets,
                    verifiers: &self.verifiers,
                },
            )
        }
    }

    #[test]
    fn a_new_program_is_admitted_with_token_1_and_the_whole_room() {
        let f = Fixture::new();
        let a = f
            .admit(&cmd("p", "r1", HookKind::Tracepoint), &state(&[]))
            .unwrap();
        assert_eq!(
            a,
            Admission::Load(Admitted {
                sha256: sha256_hex(OBJ),
                token: 1,
                map_room: 1000,
                room_by: "the program's and the agent's map memory budgets".into(),
                new_program: true
            })
        );
    }

    #[test]
    fn a_next_revision_takes_the_next_token_and_what_is_left() {
        let f = Fixture::new();
        let s = state(&[("p", &[("r1", b"old")]), ("q", &[("r1", b"x")])]);
        let Admission::Load(a) = f.admit(&cmd("p", "r2", HookKind::Tracepoint), &s).unwrap() else {
            panic!("not admitted")
        };
        assert_eq!((a.token, a.map_room, a.new_program), (7, 900, false));
    }

    #[test]
    fn the_digest_is_checked_first() {
        let f = Fixture::new();
        let mut c = cmd("p", "r1", HookKind::Kprobe);
        c.sha256 = "00".repeat(32);
        // Wrong digest and unsupported hook: the digest is what is reported.
        let e = f.admit(&c, &state(&[])).unwrap_err();
        assert!(matches!(e, Error::Denied(_)), "{e}");
    }

    #[test]
    fn the_same_digest_again_is_idempotent_another_is_refused() {
        let f = Fixture::new();
        let s = state(&[("p", &[("r1", OBJ)])]);
        // Idempotency comes before support and budgets.
        assert_eq!(
            f.admit(&cmd("p", "r1", HookKind::Kprobe), &s).unwrap(),
            Admission::AlreadyLoaded
        );
        let s = state(&[("p", &[("r1", b"other")])]);
        let e = f
            .admit(&cmd("p", "r1", HookKind::Tracepoint), &s)
            .unwrap_err();
        assert!(
            matches!(e, Error::AlreadyExists(ref m) if m.contains("immutable")),
            "{e}"
        );
    }

    #[test]
    fn an_orphan_of_the_same_name_is_left_to_the_agent_after_the_trust_checks() {
        let mut f = Fixture::new();
        // Two revisions held: the budget would refuse a third, not this.
        let mut s = state(&[("p", &[("r1", b"1"), ("r2", b"2")])]);
        if let Some(r) = s
            .programs
            .get_mut("p")
            .and_then(|p| p.revisions.get_mut("r1"))
        {
            r.orphaned = true;
            r.sha256.clear();
        }
        assert_eq!(
            f.admit(&cmd("p", "r1", HookKind::Tracepoint), &s).unwrap(),
            Admission::Orphan {
                sha256: sha256_hex(OBJ)
            }
        );
        let e = f.admit(&cmd("p", "r1", HookKind::Kprobe), &s).unwrap_err();
        assert!(matches!(e, Error::Precondition(_)), "{e}");
        f.verifiers = Verifiers::new(&[], false).unwrap();
        let e = f
            .admit(&cmd("p", "r1", HookKind::Tracepoint), &s)
            .unwrap_err();
        assert!(matches!(e, Error::Denied(_)), "{e}");
    }

    #[test]
    fn an_unsigned_object_is_refused_unless_allowed() {
        let mut f = Fixture::new();
        f.verifiers = Verifiers::new(&[], false).unwrap();
        let e = f
            .admit(&cmd("p", "r1", HookKind::Tracepoint), &state(&[]))
            .unwrap_err();
        assert!(matches!(e, Error::Denied(_)), "{e}");
    }

    #[test]
    fn unsupported_hooks_and_missing_capabilities_are_refused() {
        let mut f = Fixture::new();
        let e = f
            .admit(&cmd("p", "r1", HookKind::Kprobe), &state(&[]))
            .unwrap_err();
        assert!(
            matches!(e, Error::Precondition(ref m) if m.contains("no kprobes here")),
            "{e}"
        );
        let e = f
            .admit(&cmd("p", "r1", HookKind::Fentry), &state(&[]))
            .unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "a hook never probed: {e}");
        f.caps = 1 << caps::BPF;
        let e = f
            .admit(&cmd("p", "r1", HookKind::Xdp), &state(&[]))
            .unwrap_err();
        assert!(
            matches!(e, Error::Denied(ref m) if m.contains("CAP_NET_ADMIN")),
            "{e}"
        );
        // CAP_SYS_ADMIN stands in for every capability.
        f.caps = 1 << caps::SYS_ADMIN;
        assert!(f.admit(&cmd("p", "r1", HookKind::Xdp), &state(&[])).is_ok());
    }

    #[test]
    fn budgets_come_last() {
        let f = Fixture::new();
        let s = state(&[("a", &[]), ("b", &[])]);
        let e = f
            .admit(&cmd("p", "r1", HookKind::Tracepoint), &s)
            .unwrap_err();
        assert!(matches!(e, Error::Budget(_)), "{e}");
        let s = state(&[("p", &[("r1", b"1"), ("r2", b"2")])]);
        let e = f
            .admit(&cmd("p", "r3", HookKind::Tracepoint), &s)
            .unwrap_err();
        assert!(
            matches!(e, Error::Budget(ref m) if m.contains("2 revisions")),
            "{e}"
        );
    }

    /// A TracerPolicy's budgets count the programs of its group on the
    /// node: the next program of it is refused naming the budget, a new
    /// revision of a member is not, and its map memory room is what the
    /// group leaves.
    #[test]
    fn a_policys_budgets_count_its_programs_on_the_node() {
        let mut f = Fixture::new();
        f.budgets.max_programs = 10;
        let mut s = state(&[("a", &[("r1", b"x")]), ("b", &[("r1", b"y")])]);
        s.programs.get_mut("a").unwrap().budget_group = Some("pol".into());
        let grouped = |program: &str, revision: &str, max_programs, max_map_bytes| {
            let mut c = cmd(program, revision, HookKind::Tracepoint);
            c.group = Some(crate::agent::request::GroupBudget {
                name: "pol".into(),
                max_programs,
                max_map_bytes,
            });
            c
        };
        // `a` holds the one place; `b` is not of the group.
        let e = f.admit(&grouped("c", "r1", Some(1), None), &s).unwrap_err();
        assert!(matches!(e, Error::Budget(_)), "{e}");
        let m = e.to_string();
        assert!(
            m.contains("TracerPolicy pol's budget maxPrograms is 1") && m.contains("(a)"),
            "{m}"
        );
        // A new revision of the member is no new program of the group.
        assert!(f.admit(&grouped("a", "r2", Some(1), None), &s).is_ok());
        // Map memory: 250 for the group, `a` uses 100.
        let Admission::Load(a) = f
            .admit(&grouped("c", "r1", Some(2), Some(250)), &s)
            .unwrap()
        else {
            panic!("not admitted")
        };
        assert_eq!(a.map_room, 150);
        assert!(
            a.room_by.contains("maxMapMemory (250 bytes"),
            "{}",
            a.room_by
        );
        // A looser group budget leaves the agent's in charge.
        let Admission::Load(a) = f
            .admit(&grouped("c", "r1", None, Some(1 << 20)), &s)
            .unwrap()
        else {
            panic!("not admitted")
        };
        assert_eq!(a.map_room, 1000);
    }
}
