//! Target `agent_requests`: bytes as the node agent's gRPC server receives
//! them, decoded into one of its request messages and checked the way the
//! agent checks them before anything touches the kernel
//! (`bpfleet_agent::agent::request`), and a Load then admitted
//! (`bpfleet_agent::agent::admit`: digest, idempotency, orphans, trust,
//! node support, capabilities, budgets) against a node that holds a
//! program already. No root, no kernel: admission is pure.
//!
//! Input layout: one byte choosing the request type and two steering bits,
//! then the protobuf encoding of the message (prost, as tonic decodes it).
//! For a Load, bit 3 of the first byte replaces the request's `sha256` by
//! the object's real digest (so admission goes past the digest check) and
//! bit 4 names the program and revision the node already holds (so the
//! idempotency and orphan paths run). [`input`] writes the layout.
//!
//! What must hold whatever the bytes: no panic; a checked Load's names
//! pass the name check again, its entries are as many as the request's,
//! each with a known hook, and a path source is absolute; a checked
//! UpdateConfig's namespace filter is sorted without repeats, its map
//! named and its CPU budget a percentage above 0; an admitted Load
//! carries the object's own digest and a token the program has not
//! handed out.

use std::collections::BTreeMap;

use bpfleet_agent::agent::admit::{Admission, Held, Node, admit};
use bpfleet_agent::agent::budget::Budgets;
use bpfleet_agent::agent::request::{self, ObjectSource};
use bpfleet_agent::hooks::NodeSupport;
use bpfleet_agent::state::{ProgramState, RevisionState, StateFile};
use bpfleet_agent::trust::{Verifiers, sha256_hex};
use bpfleet_proto::v1 as pb;
use bpfleet_proto::v1::HookKind;
use prost::Message;

const LOAD: u8 = 0;
const UPDATE_CONFIG: u8 = 1;
const ACTIVATE: u8 = 2;
const ROLLBACK: u8 = 3;
const UNLOAD: u8 = 4;
const KINDS: u8 = 5;
/// Load: set `sha256` to the object's digest.
pub const REAL_DIGEST: u8 = 1 << 3;
/// Load: name the program and revision the node holds.
pub const HELD_NAMES: u8 = 1 << 4;

/// The program the node holds (one revision, `r1`, loaded from [`HELD_OBJECT`]).
pub const HELD_PROGRAM: &str = "held";
pub const HELD_OBJECT: &[u8] = b"\x7fELF held object";

/// The input for `kind` (0 Load .. 4 Unload) with `flags` and a message.
pub fn input(kind: u8, flags: u8, msg: &impl Message) -> Vec<u8> {
    let mut v = vec![kind | flags];
    v.extend(msg.encode_to_vec());
    v
}

fn held_state() -> StateFile {
    let mut revisions = BTreeMap::new();
    revisions.insert(
        "r1".to_string(),
        RevisionState {
            sha256: sha256_hex(HELD_OBJECT),
            token: 1,
            map_memory_bytes: 4096,
            ..Default::default()
        },
    );
    revisions.insert(
        "r0".to_string(),
        RevisionState {
            sha256: sha256_hex(b"an older object"),
            token: 2,
            orphaned: true,
            ..Default::default()
        },
    );
    let mut programs = BTreeMap::new();
    programs.insert(
        HELD_PROGRAM.to_string(),
        ProgramState {
            active: Some("r1".into()),
            next_token: 3,
            revisions,
            ..Default::default()
        },
    );
    StateFile {
        version: 1,
        programs,
    }
}

/// How far a run got (for the tests that check the seeds reach the
/// code they are meant for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Too short, or not the message's encoding.
    Undecoded,
    /// Refused by the request checks.
    Refused,
    /// Passed the request checks (and, for a Load from a path or an image,
    /// no further).
    Checked,
    /// A Load refused at admission.
    NotAdmitted,
    /// A Load admitted: load it.
    Admitted,
    /// A Load of what the node already holds.
    AlreadyLoaded,
    /// A Load over a revision pinned without a record.
    Orphan,
}

pub fn run(data: &[u8]) {
    let _ = reach(data);
}

/// [`run`], saying how far it got.
pub fn reach(data: &[u8]) -> Reached {
    let Some((&head, msg)) = data.split_first() else {
        return Reached::Undecoded;
    };
    let checked = |ok: bool| {
        if ok {
            Reached::Checked
        } else {
            Reached::Refused
        }
    };
    match (head & 7) % KINDS {
        LOAD => {
            let Ok(mut req) = pb::LoadRequest::decode(msg) else {
                return Reached::Undecoded;
            };
            if head & HELD_NAMES != 0 {
                req.program = HELD_PROGRAM.into();
                req.revision = if req.revision.len() % 2 == 0 {
                    "r1"
                } else {
                    "r0"
                }
                .into();
            }
            if head & REAL_DIGEST != 0
                && let Some(pb::load_request::Source::Object(b)) = &req.source
            {
                req.sha256 = sha256_hex(b);
            }
            load(req)
        }
        UPDATE_CONFIG => {
            let Ok(req) = pb::UpdateConfigRequest::decode(msg) else {
                return Reached::Undecoded;
            };
            let Ok(cmd) = request::update_config(&req) else {
                return Reached::Refused;
            };
            assert_eq!(cmd.program, req.program);
            assert!(!cmd.map.is_empty(), "the map is named");
            assert_eq!(cmd.entries.len(), req.entries.len());
            if let Some(ns) = &cmd.namespaces {
                assert!(ns.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
            }
            if let Some(Some(b)) = &cmd.cpu_budget {
                assert!(
                    b.max_cpu_percent > 0.0 && b.max_cpu_percent <= 100.0,
                    "a checked budget is a percentage: {}",
                    b.max_cpu_percent
                );
            }
            Reached::Checked
        }
        ACTIVATE => match pb::ActivateRequest::decode(msg) {
            Ok(req) => checked(request::names(&req.program, &req.revision, false).is_ok()),
            Err(_) => Reached::Undecoded,
        },
        ROLLBACK => match pb::RollbackRequest::decode(msg) {
            Ok(req) => checked(request::names(&req.program, &req.to_revision, true).is_ok()),
            Err(_) => Reached::Undecoded,
        },
        UNLOAD => match pb::UnloadRequest::decode(msg) {
            Ok(req) => checked(request::names(&req.program, &req.revision, true).is_ok()),
            Err(_) => Reached::Undecoded,
        },
        _ => Reached::Undecoded,
    }
}

fn load(req: pb::LoadRequest) -> Reached {
    let (program, entries) = (req.program.clone(), req.entries.len());
    let Ok(cmd) = request::load(req) else {
        return Reached::Refused;
    };
    assert_eq!(cmd.program, program);
    request::names(&cmd.program, &cmd.revision, false)
        .unwrap_or_else(|e| panic!("checked names fail the check again: {e}"));
    assert_eq!(cmd.entries.len(), entries);
    assert!(!cmd.entries.is_empty());
    let bytes = match &cmd.source {
        ObjectSource::Path(p) => {
            assert!(p.is_absolute(), "{}", p.display());
            return Reached::Checked;
        }
        // Pulled by the gRPC service before admission (`image`), with
        // the reference parsed there.
        ObjectSource::Image(_) => return Reached::Checked,
        ObjectSource::Bytes(b) => b.clone(),
    };
    let state = held_state();
    let map_bytes = |p: &ProgramState| p.revisions.values().map(|r| r.map_memory_bytes).sum();
    let support = NodeSupport::from_reasons([
        (HookKind::Tracepoint, None),
        (HookKind::RawTracepoint, None),
        (HookKind::Xdp, None),
        (HookKind::Kprobe, Some("no kprobe events".into())),
    ]);
    let budgets = Budgets {
        max_programs: 4,
        max_revisions: 4,
        max_map_bytes_per_program: 1 << 20,
        max_map_bytes_total: 4 << 20,
    };
    let Ok(verifiers) = Verifiers::new(&[], true) else {
        panic!("an unsigned-allowing verifier set builds");
    };
    let admission = admit(
        &cmd,
        &bytes,
        &Held {
            state: &state,
            map_bytes: &map_bytes,
        },
        &Node {
            support: &support,
            caps: u64::MAX,
            budgets: &budgets,
            verifiers: &verifiers,
        },
    );
    match admission {
        Ok(Admission::Load(a)) => {
            assert_eq!(a.sha256, sha256_hex(&bytes), "the object's own digest");
            if let Some(p) = state.programs.get(&cmd.program) {
                assert!(
                    p.revisions.values().all(|r| r.token != a.token),
                    "token {} already handed out",
                    a.token
                );
            }
            Reached::Admitted
        }
        Ok(Admission::AlreadyLoaded) => {
            let r = &state.programs[&cmd.program].revisions[&cmd.revision];
            assert_eq!(
                r.sha256,
                sha256_hex(&bytes),
                "already loaded with another digest"
            );
            Reached::AlreadyLoaded
        }
        Ok(_) => Reached::Orphan,
        Err(_) => Reached::NotAdmitted,
    }
}
