//! `--deny-helper`: an agent process told to treat a helper as missing
//! refuses a Load whose program calls it, as a kernel lacking the helper
//! would (InvalidArgument, `verifier rejected program`, `unknown func
//! bpf_...`), leaving no pin and no program; next to it an agent that
//! denies a helper the object does not call loads the same object. An
//! unknown helper name stops the agent at start. Needs root. A file of its
//! own: the kernel-wide check (bpftool) must not see other tests' loads of
//! the same object.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use bpfleet_bpf as objs;
use bpfleet_proto::v1 as pb;
use common::*;

/// Ids of the kernel's programs named `name` (bpftool).
fn progs_named(name: &str) -> BTreeSet<u32> {
    bpftool_json(&["prog", "show"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str() == Some(name))
        .filter_map(|p| p["id"].as_u64())
        .map(|id| id as u32)
        .collect()
}

/// BPF program fds the process `pid` holds.
fn prog_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == "anon_inode:bpf-prog")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_helper_fails_the_load_as_on_a_kernel_lacking_it() {
    let before = progs_named("count_getppid");
    let dispatchers_before = progs_named("dispatch_tp");
    // syscount_v1's count_getppid calls bpf_get_current_pid_tgid (and
    // bpf_map_lookup_elem), never bpf_ringbuf_output.
    let denying_root = PinRoot::new("deny-helper");
    let denying = AgentProc::start(
        &denying_root,
        None,
        &[
            "--allow-unsigned",
            "--deny-helper",
            "bpf_ringbuf_output",
            "--deny-helper",
            "bpf_get_current_pid_tgid",
        ],
    );
    let other_root = PinRoot::new("deny-other");
    let other = AgentProc::start(
        &other_root,
        None,
        &["--allow-unsigned", "--deny-helper", "ringbuf_output"],
    );
    let mut d = denying.client().await;
    let mut o = other.client().await;

    let e = d.load(syscount("v1", objs::SYSCOUNT_V1)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let msg = e.message();
    assert!(
        msg.contains("verifier rejected program count_getppid"),
        "{msg}"
    );
    assert!(
        msg.contains("(85) call bpf_get_current_pid_tgid#14"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "unknown func bpf_get_current_pid_tgid#14 (refused on this node: --deny-helper)"
        ),
        "{msg}"
    );
    // Nothing left behind: no pin, no program directory, nothing listed,
    // no program held or in the kernel.
    assert!(
        denying_root.pins().is_empty(),
        "pins left: {:?}",
        denying_root.pins()
    );
    assert!(!denying_root.path.join("syscount").exists());
    let listed = d
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.programs.is_empty(), "{listed:?}");
    assert_eq!(prog_fds(denying.pid()), 0, "the agent holds a program");
    assert_eq!(
        progs_named("count_getppid"),
        before,
        "a refused load left a program"
    );

    // The same object on the node that denies only a helper it does not call.
    let r = o
        .load(syscount("v1", objs::SYSCOUNT_V1))
        .await
        .unwrap()
        .into_inner();
    let ids = r.revision.unwrap().prog_ids;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let now: BTreeSet<u32> = progs_named("count_getppid")
        .difference(&before)
        .copied()
        .collect();
    assert_eq!(
        now,
        ids.iter().copied().collect(),
        "bpftool: only the other agent's program is new"
    );
    assert!(!other_root.pins().is_empty());
    let dispatchers: BTreeSet<u32> = progs_named("dispatch_tp")
        .difference(&dispatchers_before)
        .copied()
        .collect();
    o.unload(pb::UnloadRequest {
        program: "syscount".into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    assert!(other_root.pins().is_empty(), "{:?}", other_root.pins());
    drop((denying, other));
    assert!(
        ids.iter().chain(&dispatchers).all(|id| !prog_exists(*id)),
        "left in the kernel: {ids:?} {dispatchers:?}"
    );
    assert!(denying_root.pins().is_empty() && other_root.pins().is_empty());
}

#[test]
fn an_unknown_helper_stops_the_agent_at_start() {
    let root = PinRoot::new("deny-unknown");
    let out = std::process::Command::new(Path::new(env!("CARGO_BIN_EXE_bpfleet-agent")))
        .arg("serve")
        .args(root.files().serve_args())
        .args(["--allow-unsigned", "--deny-helper", "bpf_no_such_helper"])
        .output()
        .expect("run the agent");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--deny-helper") && err.contains("bpf_no_such_helper"),
        "{err}"
    );
    assert!(root.pins().is_empty());
    assert!(!root.socket().exists());
}
