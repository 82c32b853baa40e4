//! Agent `LoadRequest`s built from a compiled object, as tests and benches
//! send them: the digest computed here, entries from (program, hook,
//! target). Pure; it builds wire messages and checks nothing (the agent's
//! checks are what the tests exercise). It must not name a particular
//! object's programs: callers pass those (the tracer's come from
//! `bpfleet_tracer::PROGRAMS`).

use bpfleet_proto::v1::{self as pb, HookKind, load_request::Source};
use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of `bytes`, as `LoadRequest.sha256` wants it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One program entry: the object's program `prog` on `hook` at `target`.
pub fn entry(prog: &str, hook: HookKind, target: &str) -> pb::ProgramEntry {
    pb::ProgramEntry {
        bpf_program: prog.into(),
        hook: hook as i32,
        target: target.into(),
        pid: 0,
    }
}

/// Tracepoint entries from (program, "category/name") pairs.
pub fn tracepoints(programs: &[(&str, &str)]) -> Vec<pb::ProgramEntry> {
    programs
        .iter()
        .map(|(p, tp)| entry(p, HookKind::Tracepoint, tp))
        .collect()
}

/// Loads `obj` inline as `program`/`revision`, its digest filled in,
/// unsigned, no budget.
pub fn load_request(
    program: &str,
    revision: &str,
    obj: &[u8],
    entries: Vec<pb::ProgramEntry>,
    persistent: &[&str],
) -> pb::LoadRequest {
    pb::LoadRequest {
        program: program.into(),
        revision: revision.into(),
        source: Some(Source::Object(obj.to_vec())),
        sha256: sha256_hex(obj),
        signature: String::new(),
        entries,
        persistent_maps: persistent.iter().map(|s| s.to_string()).collect(),
        budget: None,
        recreate_incompatible_maps: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_lower_case_hex_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_request_carries_the_object_its_digest_and_entries() {
        let r = load_request(
            "p",
            "r1",
            b"\x7fELF",
            tracepoints(&[("a", "syscalls/sys_enter_read"), ("b", "sched/x")]),
            &["m"],
        );
        assert_eq!((r.program.as_str(), r.revision.as_str()), ("p", "r1"));
        assert_eq!(r.source, Some(Source::Object(b"\x7fELF".to_vec())));
        assert_eq!(r.sha256, sha256_hex(b"\x7fELF"));
        assert_eq!(r.entries.len(), 2);
        assert_eq!(r.entries[1].hook(), HookKind::Tracepoint);
        assert_eq!(r.entries[1].target, "sched/x");
        assert_eq!(r.persistent_maps, ["m"]);
        assert!(r.signature.is_empty() && r.budget.is_none());
    }
}
