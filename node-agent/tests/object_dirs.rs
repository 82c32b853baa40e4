//! Path sources under `--object-dir`: the agent process, over its gRPC
//! socket, loads an object that lies in its allowed directory and refuses,
//! before reading anything, one reached through `..`, a symlink pointing
//! out, a file beside the directory and a FIFO inside it; nothing of a
//! refused Load reaches the kernel or the pin root. The pure path check is
//! unit-tested in `src/agent/object_dirs.rs`. Needs root.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bpfleet_bpf as objs;
use bpfleet_proto::v1::{self as pb, load_request::Source};
use common::*;

fn path_req(revision: &str, path: &std::path::Path) -> pb::LoadRequest {
    let mut r = syscount(revision, objs::SYSCOUNT_V1);
    r.source = Some(Source::ObjectPath(path.display().to_string()));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_sources_outside_the_object_dirs_are_refused_before_any_read() {
    let root = PinRoot::new("objdirs");
    let scratch = root.scratch.path();
    let allowed = scratch.join("objects");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::write(allowed.join("syscount.o"), objs::SYSCOUNT_V1).unwrap();
    // The same object outside, reachable by `..`, a symlink, or directly.
    std::fs::write(scratch.join("outside.o"), objs::SYSCOUNT_V1).unwrap();
    std::os::unix::fs::symlink(scratch.join("outside.o"), allowed.join("link.o")).unwrap();
    std::fs::create_dir_all(scratch.join("objects-evil")).unwrap();
    std::fs::write(scratch.join("objects-evil/x.o"), objs::SYSCOUNT_V1).unwrap();
    let fifo = allowed.join("fifo.o");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let agent = AgentProc::start(
        &root,
        None,
        &[
            "--allow-unsigned",
            "--object-dir",
            allowed.to_str().unwrap(),
        ],
    );
    let mut c = agent.client().await;

    let a = allowed.display().to_string();
    for (i, escape) in [
        allowed.join("../outside.o"),
        allowed.join("link.o"),
        scratch.join("outside.o"),
        allowed.join("../objects-evil/x.o"),
    ]
    .iter()
    .enumerate()
    {
        let started = Instant::now();
        let e = c
            .load(path_req(&format!("bad{i}"), escape))
            .await
            .expect_err("a path outside --object-dir was loaded");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{escape:?}: {e:?}");
        let m = e.message();
        assert!(
            m.contains("spec.bytecode.file.path") && m.contains(&a) && m.contains("--object-dir"),
            "{m}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // A FIFO inside: refused at once (opening it would block for a writer).
    let started = Instant::now();
    let e = c.load(path_req("fifo", &fifo)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not a regular file"), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Nothing of the refused Loads: no program, no pin, audited as refused.
    let listed = c
        .list(pb::ListRequest {
            program: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.programs.is_empty(), "{listed:?}");
    assert!(root.pins().is_empty(), "pins: {:?}", root.pins());
    let audit = std::fs::read_to_string(root.audit_log()).unwrap();
    assert_eq!(
        audit.lines().filter(|l| l.contains("\"denied\"")).count(),
        4,
        "{audit}"
    );

    // The object inside loads, also through a path with `.` in it.
    let r = c
        .load(path_req("v1", &allowed.join("./syscount.o")))
        .await
        .unwrap()
        .into_inner();
    let ids = r.revision.unwrap().prog_ids;
    assert_eq!(ids.len(), 1);
    c.unload(pb::UnloadRequest {
        program: "syscount".into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    assert!(root.pins().is_empty(), "pins: {:?}", root.pins());
    for id in ids {
        assert!(!prog_exists(id), "program {id} still loaded");
    }
}

/// `--object-dir` must be absolute: the agent refuses to start otherwise,
/// naming the flag.
#[test]
fn a_relative_object_dir_stops_the_agent_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bpfleet-agent"))
        .args(["serve", "--object-dir", "objects", "--socket"])
        .arg(dir.path().join("agent.sock"))
        .arg("--state-file")
        .arg(dir.path().join("state.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--object-dir objects"), "{err}");
}
