//! Replays every committed input through its target's body: the seed and
//! minimised corpus (`corpus/<target>/`) and the inputs of crashes found
//! and fixed (`regressions/<target>/`). Runs on stable with a plain
//! `cargo test`; no cargo-fuzz, no libFuzzer run.

use std::path::{Path, PathBuf};

use bpfleet_httptrace::rules::{RedactionRules, Rules};

type Body = fn(&[u8]);

const TARGETS: [(&str, Body); 5] = [
    ("http_segments", bpfleet_fuzz::http_segments::run),
    ("tracer_events", bpfleet_fuzz::tracer_events::run),
    ("rules", bpfleet_fuzz::rules::run),
    ("agent_requests", bpfleet_fuzz::agent_requests::run),
    ("agent_replies", bpfleet_fuzz::agent_replies::run),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files in `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    v.retain(|p| p.is_file());
    v.sort();
    v
}

#[test]
fn every_committed_input_replays_cleanly() {
    let mut replayed = 0;
    for (target, body) in TARGETS {
        for kind in ["corpus", "regressions"] {
            for file in files(&root().join(kind).join(target)) {
                let data = std::fs::read(&file).expect("readable input");
                let outcome = std::panic::catch_unwind(|| body(&data));
                assert!(outcome.is_ok(), "{target}: {} fails", file.display());
                replayed += 1;
            }
        }
        assert!(
            !files(&root().join("corpus").join(target)).is_empty(),
            "{target} has no corpus"
        );
    }
    println!("replayed {replayed} inputs");
}

/// Every seed in `src/seeds.rs` is in `corpus/` as written
/// (`BPFLEET_WRITE_SEEDS=1` writes them instead of checking).
#[test]
fn the_seeds_are_committed() {
    let write = std::env::var_os("BPFLEET_WRITE_SEEDS").is_some();
    for s in bpfleet_fuzz::seeds::all() {
        let path = root()
            .join("corpus")
            .join(s.target)
            .join(format!("seed-{}", s.name));
        if write {
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("corpus dir");
            std::fs::write(&path, &s.data).expect("seed written");
        } else {
            let committed = std::fs::read(&path).unwrap_or_default();
            assert!(
                committed == s.data,
                "{} differs from src/seeds.rs (BPFLEET_WRITE_SEEDS=1 cargo test rewrites it)",
                path.display()
            );
        }
    }
}

/// The header `Header::record` lays out is the one `Event::decode` reads.
#[test]
fn the_seed_record_layout_is_the_decoders() {
    use bpfleet_fuzz::tracer_events::{Header, KIND_DATA};
    use bpfleet_tracer::event::{ConnId, Event, HEADER_LEN, Kind};
    let h = Header {
        ts_ns: 11,
        sock_id: 12,
        cgroup_id: 13,
        tgid: 14,
        pid: 15,
        fd: 16,
        len: 17,
        cap: 3,
        local_port: 18,
        remote_port: 19,
        kind: KIND_DATA,
        dir: 1,
        role: 2,
        rev: 20,
    };
    let b = h.record(b"GET");
    assert_eq!(b.len(), HEADER_LEN + 3);
    let e = Event::decode(&b).expect("decodes");
    assert_eq!(e.kind, Kind::Data);
    assert_eq!(
        (e.ts_ns, e.cgroup_id, e.pid, e.fd, e.len),
        (11, 13, 15, 16, 17)
    );
    assert_eq!(
        e.conn,
        ConnId {
            tgid: 14,
            sock: 12,
            fd: 0
        }
    );
    assert_eq!((e.local_port, e.remote_port, e.revision), (18, 19, 20));
    assert_eq!(e.direction, bpfleet_httptrace::Direction::Write);
    assert_eq!(e.role, Some(bpfleet_httptrace::Role::Client));
    assert_eq!(e.data, b"GET");
}

fn with_pattern(p: &str) -> Rules {
    Rules {
        redaction: RedactionRules {
            command_line_patterns: vec![p.to_string()],
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Command-line patterns compile under the `regex` crate's default size
/// limit (bpfleet sets none of its own): a pattern whose program would
/// pass it is refused, quickly, rather than compiled.
#[test]
fn a_regex_past_the_compile_size_limit_is_refused() {
    for p in [
        r"\w{10000}",
        r"((a{100}){100}){100}",
        r"[\p{L}\p{N}]{2000}{10}",
    ] {
        let started = std::time::Instant::now();
        let err = with_pattern(p).check().expect_err("refused").to_string();
        assert!(
            err.starts_with("redaction.commandLinePatterns[0]:") && err.contains("size limit"),
            "{p}: {err}"
        );
        assert!(
            started.elapsed().as_secs() < 5,
            "{p} took {:?}",
            started.elapsed()
        );
    }
    assert!(with_pattern(r"--pin=\S+").check().is_ok());
}

/// The agent request seeds reach what they are named for: a new program
/// admitted, a wrong digest refused at admission, the held revision found
/// loaded, a path source and the other requests past their checks.
#[test]
fn the_agent_request_seeds_reach_admission() {
    use bpfleet_fuzz::agent_requests::{Reached, reach};
    let want = [
        ("load-new-program", Reached::Admitted),
        ("load-wrong-digest", Reached::NotAdmitted),
        ("load-held-revision", Reached::AlreadyLoaded),
        ("load-object-path", Reached::Checked),
        ("update-config-namespaces", Reached::Checked),
        ("activate", Reached::Checked),
        ("rollback-previous", Reached::Checked),
        ("unload-program", Reached::Checked),
    ];
    let seeds = bpfleet_fuzz::seeds::all();
    for (name, reached) in want {
        let s = seeds
            .iter()
            .find(|s| s.target == "agent_requests" && s.name == name)
            .unwrap_or_else(|| panic!("no seed {name}"));
        assert_eq!(reach(&s.data), reached, "{name}");
    }
}

/// The agent reply seeds reach what they are named for: the healthy canary
/// and the one whose candidate counts program errors get health samples
/// and an analysis (passed, failed), the refusals become node failures,
/// a reply that does not decode is taken for an unreachable node.
#[test]
fn the_agent_reply_seeds_reach_the_machine() {
    use bpfleet_api::program::AnalysisVerdict;
    use bpfleet_fuzz::agent_replies::reach;
    let seeds = bpfleet_fuzz::seeds::all();
    let seed = |name: &str| {
        let s = seeds
            .iter()
            .find(|s| s.target == "agent_replies" && s.name == name)
            .unwrap_or_else(|| panic!("no seed {name}"));
        reach(&s.data)
    };
    let verdict = |r: &bpfleet_fuzz::agent_replies::Reached| {
        r.status
            .as_ref()
            .and_then(|s| s.last_analysis.as_ref())
            .map(|a| a.verdict)
    };

    let healthy = seed("canary-healthy");
    assert_eq!(healthy.rounds, 6);
    assert!(healthy.samples > 0 && healthy.analyses > 0, "{healthy:?}");
    assert_eq!(
        verdict(&healthy),
        Some(AnalysisVerdict::Passed),
        "{healthy:?}"
    );
    let errors = seed("canary-program-errors");
    assert_eq!(
        verdict(&errors),
        Some(AnalysisVerdict::Failed),
        "{errors:?}"
    );

    let refused = seed("load-verifier-rejected");
    assert_eq!((refused.rounds, refused.failures), (3, 3), "{refused:?}");
    let failing = refused.status.map(|s| s.failing_nodes).unwrap_or_default();
    assert!(
        failing
            .iter()
            .any(|f| f.reason == "VerifierRejected" || f.reason == "Unsupported"),
        "{failing:?}"
    );

    let garbage = seed("unreachable-and-garbage");
    assert_eq!(
        (garbage.rounds, garbage.garbage, garbage.failures),
        (2, 1, 0)
    );
}
