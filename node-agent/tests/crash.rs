//! Crash consistency of the agent process, over its real gRPC API and the
//! real kernel: for every fault point of `src/fault.rs` the agent is
//! started with `BPFLEET_FAULT=<point>`, sent the call that reaches it
//! (it must die of SIGABRT, the connection dropping), restarted without
//! the fault, and then:
//!
//! - the node's truth equals the agent's report: the pins under the
//!   test's pin root are exactly the pins List names, and bpftool sees
//!   every List program id, every link with the program List says it runs;
//! - a program active before the call is still active: exactly one
//!   revision is active, it is the one in the dispatcher's slot, and it is
//!   the one counting `getppid(2)`;
//! - the same call sent again succeeds and leaves the same truth;
//! - the program is unloaded at the end and none of its kernel programs
//!   is left.
//!
//! The same for a state file truncated, emptied or overwritten with
//! garbage between two runs. Needs root and the feature `fault-injection`
//! (`cargo test -p bpfleet-agent --features fault-injection --test crash`).
//! Each test has its own pin root, removed when it ends, failed or not.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bpfleet_bpf as objs;
use bpfleet_proto::v1::{self as pb, RevisionState};
use common::*;

type Client = pb::agent_client::AgentClient<tonic::transport::Channel>;

const PROGRAM: &str = "syscount";

/// A node of the test's own: a pin root, and the agent process on it.
struct Node {
    // The agent goes first (killed), then the pins (removed): whatever a
    // failed test left loaded is gone when the node is dropped.
    agent: Option<AgentProcess>,
    root: PinRoot,
    /// Every kernel program id List ever named (all must be gone at the end).
    seen: BTreeSet<u32>,
    /// Faults of this test (to name in failures).
    tag: String,
}

impl Node {
    fn new(tag: &str) -> Self {
        Self {
            agent: None,
            root: PinRoot::new(&format!("crash-{tag}")),
            seen: BTreeSet::new(),
            tag: tag.to_string(),
        }
    }

    /// Starts the agent, with `fault` armed when given.
    async fn start(&mut self, fault: Option<&str>) -> Client {
        let env: Vec<(&str, &str)> = fault.map(|f| ("BPFLEET_FAULT", f)).into_iter().collect();
        let bin = Path::new(env!("CARGO_BIN_EXE_bpfleet-agent"));
        self.agent = Some(AgentProcess::start(
            bin,
            &self.root.files(),
            None,
            &["--allow-unsigned"],
            &env,
        ));
        // The socket file exists from bind(2); listen(2) follows: a
        // connection in between is refused, so try again for a while.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match bpfleet_agent::cli::connect_unix(self.root.socket()).await {
                Ok(c) => return c,
                Err(e) if Instant::now() > deadline => panic!("{}: connect: {e}", self.tag),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// The agent must have died of SIGABRT (the fault point), within 10 s.
    fn expect_aborted(&mut self, point: &str) {
        use std::os::unix::process::ExitStatusExt;
        let mut a = self.agent.take().expect("an agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = a.child.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the agent did not abort at {point}",
                self.tag
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(
            status.signal(),
            Some(libc::SIGABRT),
            "{}: the agent ended with {status}, not at fault point {point}",
            self.tag
        );
    }

    /// The node's truth against List; returns List's one program (None
    /// when List has none).
    async fn check_truth(&mut self, c: &mut Client) -> Option<pb::ProgramInfo> {
        let list = c
            .list(pb::ListRequest::default())
            .await
            .unwrap()
            .into_inner()
            .programs;
        assert!(list.len() <= 1, "{}: {list:?}", self.tag);
        let mut reported = BTreeSet::new();
        for p in &list {
            reported.extend(p.shared_pins.iter().map(PathBuf::from));
            for r in &p.revisions {
                reported.extend(r.pins.iter().map(PathBuf::from));
            }
        }
        let on_disk: BTreeSet<PathBuf> = self.root.pins().into_iter().collect();
        assert_eq!(
            on_disk, reported,
            "{}: pins under the pin root (left) vs List (right)",
            self.tag
        );
        let p = list.into_iter().next()?;
        assert!(
            !p.revisions.is_empty() || !p.shared_pins.is_empty(),
            "{}: List names a program with nothing pinned: {p:?}",
            self.tag
        );
        let kernel_progs = bpftool_ids(&["prog", "show"]);
        let kernel_links = bpftool_json(&["link", "show"]);
        for r in &p.revisions {
            // Every program pin is one of the revision's program ids.
            for pin in r.pins.iter().filter(|p| is_prog_pin(p)) {
                let id = bpftool_json(&["prog", "show", "pinned", pin])["id"]
                    .as_u64()
                    .unwrap() as u32;
                assert!(
                    r.prog_ids.contains(&id),
                    "{}: {pin} is program {id}, List says {:?}",
                    self.tag,
                    r.prog_ids
                );
            }
            assert_eq!(
                r.prog_ids.len(),
                r.pins.iter().filter(|p| is_prog_pin(p)).count(),
                "{}: {r:?}",
                self.tag
            );
            for id in &r.prog_ids {
                assert!(
                    kernel_progs.contains(id),
                    "{}: bpftool has no program {id}",
                    self.tag
                );
                self.seen.insert(*id);
            }
            // Links: bpftool agrees on the link and what it runs (the
            // dispatcher); the dispatcher's slot holds what List says.
            for l in &r.links {
                if l.pin.is_empty() {
                    // No link on this hook: nothing runs there.
                    assert_eq!((l.link_id, l.prog_id), (0, 0), "{}: {l:?}", self.tag);
                    assert_ne!(
                        r.revision, p.active_revision,
                        "{}: active, not attached: {p:?}",
                        self.tag
                    );
                    continue;
                }
                let link = bpftool_json(&["link", "show", "pinned", &l.pin]);
                assert_eq!(
                    link["id"].as_u64(),
                    Some(u64::from(l.link_id)),
                    "{}",
                    self.tag
                );
                let listed = kernel_links
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["id"] == link["id"]);
                assert!(listed, "{}: bpftool link show lacks {link}", self.tag);
                let disp = Path::new(&l.pin).with_file_name(
                    Path::new(&l.pin)
                        .file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .replacen("_link_", "_disp_", 1),
                );
                let disp_id =
                    bpftool_json(&["prog", "show", "pinned", disp.to_str().unwrap()])["id"].clone();
                assert_eq!(link["prog_id"], disp_id, "{}: {link}", self.tag);
                self.seen.insert(disp_id.as_u64().unwrap() as u32);
                let slot = Path::new(&l.pin).with_file_name(
                    Path::new(&l.pin)
                        .file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .replacen("_link_", "_slot_", 1),
                );
                assert_eq!(
                    slot_prog(&slot),
                    l.prog_id,
                    "{}: slot {} vs List",
                    self.tag,
                    slot.display()
                );
            }
        }
        // Exactly the revision List names is active (an orphan is shown as
        // such, active or not), and every dispatcher's slot runs it.
        let active: Vec<&str> = p
            .revisions
            .iter()
            .filter(|r| r.state == RevisionState::Active as i32)
            .map(|r| r.revision.as_str())
            .collect();
        let named = p.revisions.iter().find(|r| r.revision == p.active_revision);
        if p.active_revision.is_empty() {
            assert!(active.is_empty(), "{}: {p:?}", self.tag);
        } else {
            let named = named.unwrap_or_else(|| panic!("{}: {p:?}", self.tag));
            if named.state != RevisionState::Orphaned as i32 {
                assert_eq!(active, [p.active_revision.as_str()], "{}", self.tag);
            }
        }
        for slot in self.root.pins().iter().filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("_slot_")
        }) {
            let in_slot = slot_prog(slot);
            match named {
                Some(r) => assert!(
                    r.prog_ids.contains(&in_slot),
                    "{}: {} runs {in_slot}, active {} is {:?}",
                    self.tag,
                    slot.display(),
                    r.revision,
                    r.prog_ids
                ),
                None => assert_eq!(in_slot, 0, "{}: {}", self.tag, slot.display()),
            }
        }
        for r in &p.revisions {
            for l in &r.links {
                let runs_it = l.prog_id != 0 && r.prog_ids.contains(&l.prog_id);
                assert_eq!(
                    runs_it,
                    r.revision == p.active_revision,
                    "{}: revision {} ({:?}) vs slot {} with {} active",
                    self.tag,
                    r.revision,
                    r.prog_ids,
                    l.prog_id,
                    p.active_revision
                );
            }
        }
        Some(p)
    }

    /// Unloads the program (when any) and checks nothing of it is left:
    /// no pin, none of the program ids seen during the test.
    async fn unload_all(&mut self, c: &mut Client) {
        c.unload(pb::UnloadRequest {
            program: PROGRAM.into(),
            revision: String::new(),
        })
        .await
        .unwrap();
        assert!(self.check_truth(c).await.is_none(), "{}", self.tag);
        assert!(self.root.pins().is_empty(), "{}", self.tag);
        self.agent = None;
        for id in &self.seen {
            assert!(
                !prog_exists(*id),
                "{}: program {id} is still loaded",
                self.tag
            );
        }
    }
}

fn activate(revision: &str) -> pb::ActivateRequest {
    pb::ActivateRequest {
        program: PROGRAM.into(),
        revision: revision.into(),
    }
}

/// v1 loaded and active (counting this thread only), then `call`'s
/// starting point: v2 loaded (but for Load), and active (for Rollback);
/// nothing at all for the first Load of the program.
async fn base(c: &mut Client, call: Call) {
    if let Call::LoadNewV1 = call {
        return;
    }
    c.load(syscount("v1", objs::SYSCOUNT_V1)).await.unwrap();
    c.update_config(only_thread(PROGRAM, gettid()))
        .await
        .unwrap();
    c.activate(activate("v1")).await.unwrap();
    if !matches!(call, Call::LoadV2) {
        c.load(syscount("v2", objs::SYSCOUNT_V2)).await.unwrap();
    }
    if matches!(call, Call::RollbackToV1) {
        c.activate(activate("v2")).await.unwrap();
    }
}

/// One of the calls the fault points stop.
#[derive(Clone, Copy, Debug)]
enum Call {
    /// The program's first revision: its dispatcher is made too.
    LoadNewV1,
    LoadV2,
    ActivateV2,
    RollbackToV1,
    UnloadAll,
    UnloadV2,
    Config,
}

/// A policy's slots call as the operator sends it: a slot of the policy's
/// (8) and the namespace filter (kept in the state file); the stamp
/// follows in a call of its own.
fn policy() -> pb::UpdateConfigRequest {
    pb::UpdateConfigRequest {
        program: PROGRAM.into(),
        map: String::new(),
        entries: vec![pb::ConfigEntry {
            key: 8u32.to_ne_bytes().to_vec(),
            value: 5u64.to_ne_bytes().to_vec(),
        }],
        replace: false,
        namespaces: Some(pb::NamespaceFilter {
            names: vec!["shop".into()],
        }),
        tracer_rules: None,
        cpu_budget: None,
        alerts: None,
    }
}

async fn send(c: &mut Client, call: Call) -> Result<(), tonic::Status> {
    match call {
        Call::LoadNewV1 => c.load(syscount("v1", objs::SYSCOUNT_V1)).await.map(drop),
        Call::LoadV2 => c.load(syscount("v2", objs::SYSCOUNT_V2)).await.map(drop),
        Call::ActivateV2 => c.activate(activate("v2")).await.map(drop),
        Call::RollbackToV1 => c
            .rollback(pb::RollbackRequest {
                program: PROGRAM.into(),
                to_revision: "v1".into(),
            })
            .await
            .map(drop),
        Call::UnloadAll | Call::UnloadV2 => c
            .unload(pb::UnloadRequest {
                program: PROGRAM.into(),
                revision: if matches!(call, Call::UnloadV2) {
                    "v2".into()
                } else {
                    String::new()
                },
            })
            .await
            .map(drop),
        Call::Config => c.update_config(policy()).await.map(drop),
    }
}

/// What must hold after `call` succeeded (the retry).
fn expect_done(root: &PinRoot, call: Call, p: Option<&pb::ProgramInfo>, tag: &str) {
    let revisions = |p: &pb::ProgramInfo| -> Vec<(String, i32)> {
        p.revisions
            .iter()
            .map(|r| (r.revision.clone(), r.state))
            .collect()
    };
    let (active, inactive) = (RevisionState::Active as i32, RevisionState::Inactive as i32);
    match call {
        Call::UnloadAll => assert!(p.is_none(), "{tag}: {p:?}"),
        Call::LoadNewV1 => {
            let p = p.unwrap();
            assert_eq!(revisions(p), [("v1".into(), inactive)], "{tag}");
            assert_eq!(counting(root), "", "{tag}");
        }
        Call::UnloadV2 => {
            let p = p.unwrap();
            assert_eq!(revisions(p), [("v1".into(), active)], "{tag}");
            assert_eq!(counting(root), "v1", "{tag}");
        }
        Call::LoadV2 | Call::RollbackToV1 => {
            let p = p.unwrap();
            assert_eq!(
                revisions(p),
                [("v1".into(), active), ("v2".into(), inactive)],
                "{tag}"
            );
            assert_eq!(counting(root), "v1", "{tag}");
        }
        Call::ActivateV2 => {
            let p = p.unwrap();
            assert_eq!(
                revisions(p),
                [("v1".into(), inactive), ("v2".into(), active)],
                "{tag}"
            );
            assert_eq!(counting(root), "v2", "{tag}");
        }
        Call::Config => {
            let p = p.unwrap();
            assert_eq!(
                (p.config[8], p.namespaces.clone()),
                (5, vec!["shop".to_string()]),
                "{tag}"
            );
            assert_eq!(counting(root), "v1", "{tag}");
        }
    }
}

/// The whole scenario for one fault point (`test`: the test's name, for
/// its pin root).
async fn crash_at(test: &str, point: &str, call: Call) {
    let mut n = Node::new(test);
    n.tag = format!("{point} ({call:?})");
    let mut c = n.start(None).await;
    base(&mut c, call).await;
    let before = n.check_truth(&mut c).await;
    let was_active = before
        .as_ref()
        .map(|p| p.active_revision.clone())
        .unwrap_or_default();
    if before.is_some() {
        assert_eq!(counting(&n.root), was_active);
    }
    drop(c);
    n.agent = None;

    // The call, with the agent aborting at the point.
    let mut c = n.start(Some(point)).await;
    let r = send(&mut c, call).await;
    assert!(r.is_err(), "{}: the agent replied {r:?}", n.tag);
    drop(c);
    n.expect_aborted(point);

    // Restarted: the truth equals the report, and what ran still runs
    // (whichever revision the switch left active, exactly one counts).
    let mut c = n.start(None).await;
    let after = n.check_truth(&mut c).await;
    match call {
        Call::UnloadAll => {}
        Call::ActivateV2 | Call::RollbackToV1 => {
            let p = after.as_ref().unwrap();
            assert!(
                ["v1", "v2"].contains(&p.active_revision.as_str()),
                "{}: {p:?}",
                n.tag
            );
            assert_eq!(counting(&n.root), p.active_revision, "{}", n.tag);
        }
        _ => {
            let p = after.as_ref().unwrap();
            assert_eq!(p.active_revision, was_active, "{}: {p:?}", n.tag);
            assert_eq!(counting(&n.root), was_active, "{}", n.tag);
        }
    }
    if let (Call::Config, Some(p)) = (call, &after) {
        // The stamp, which the operator writes in a call of its own after
        // this one, still says the policy is not in force.
        assert_eq!(p.config[15], 0, "{}", n.tag);
    }

    // The operator's retry converges, and once more changes nothing.
    for attempt in 0..2 {
        send(&mut c, call)
            .await
            .unwrap_or_else(|e| panic!("{}: retry {attempt}: {e}", n.tag));
        let p = n.check_truth(&mut c).await;
        expect_done(&n.root, call, p.as_ref(), &n.tag);
    }
    // And a restart after the retry shows the same.
    drop(c);
    n.agent = None;
    let mut c = n.start(None).await;
    let p = n.check_truth(&mut c).await;
    expect_done(&n.root, call, p.as_ref(), &n.tag);
    if let Call::ActivateV2 = call {
        // The switch is in the history: Rollback goes back to v1.
        let r = c
            .rollback(pb::RollbackRequest {
                program: PROGRAM.into(),
                to_revision: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("{}: rollback after the restart: {e}", n.tag))
            .into_inner();
        assert_eq!(r.active_revision, "v1", "{}", n.tag);
        assert_eq!(counting(&n.root), "v1", "{}", n.tag);
    }
    n.unload_all(&mut c).await;
}

macro_rules! crash_tests {
    ($($name:ident: $point:literal, $call:ident;)*) => {$(
        #[tokio::test]
        async fn $name() {
            crash_at(stringify!($name), $point, Call::$call).await;
        }
    )*};
}

crash_tests! {
    load_new_program_mid_pins: "load.mid_pins", LoadNewV1;
    load_new_program_after_kernel: "load.after_kernel", LoadNewV1;
    load_mid_pins: "load.mid_pins", LoadV2;
    load_after_kernel: "load.after_kernel", LoadV2;
    load_after_state: "load.after_state", LoadV2;
    activate_after_kernel: "activate.after_kernel", ActivateV2;
    activate_after_state: "activate.after_state", ActivateV2;
    rollback_after_kernel: "rollback.after_kernel", RollbackToV1;
    rollback_after_state: "rollback.after_state", RollbackToV1;
    unload_mid_pins: "unload.mid_pins", UnloadAll;
    unload_after_kernel: "unload.after_kernel", UnloadAll;
    unload_after_state: "unload.after_state", UnloadAll;
    unload_revision_mid_pins: "unload.mid_pins", UnloadV2;
    unload_revision_after_kernel: "unload.after_kernel", UnloadV2;
    config_after_kernel: "config.after_kernel", Config;
    config_after_state: "config.after_state", Config;
}

/// The state file damaged between two runs (v1 active, v2 loaded).
async fn damaged_state(tag: &str, damage: fn(&Path)) {
    let mut n = Node::new(tag);
    n.tag = format!("state file {tag}");
    let mut c = n.start(None).await;
    base(&mut c, Call::ActivateV2).await;
    let before = n.check_truth(&mut c).await.unwrap();
    drop(c);
    n.agent.as_mut().unwrap().kill9();
    n.agent = None;
    let state = n.root.state_file();
    damage(&state);

    let mut c = n.start(None).await;
    let after = n.check_truth(&mut c).await.unwrap();
    // Nothing unloaded: the same programs, v1 still running.
    let ids = |p: &pb::ProgramInfo, rev: &str| -> Vec<u32> {
        p.revisions
            .iter()
            .filter(|r| r.revision == rev)
            .flat_map(|r| r.prog_ids.iter().copied())
            .collect()
    };
    for rev in ["v1", "v2"] {
        assert_eq!(ids(&after, rev), ids(&before, rev), "{}: {rev}", n.tag);
    }
    assert_eq!(after.active_revision, "v1", "{}: {after:?}", n.tag);
    assert_eq!(counting(&n.root), "v1", "{}", n.tag);
    // Reported, and kept aside for inspection.
    let h = c.health(pb::HealthRequest {}).await.unwrap().into_inner();
    let said = h.problems.iter().any(|p| {
        p.contains(&format!("state file {} was corrupt", state.display()))
            && p.contains(".corrupt-")
    });
    assert!(said, "{}: {h:?}", n.tag);
    let kept: Vec<String> = std::fs::read_dir(n.root.scratch.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("state.json.corrupt-"))
        .collect();
    assert_eq!(kept.len(), 1, "{}: {kept:?}", n.tag);

    // The operator sends its desired state again: it converges, v1 (the
    // running one) kept as it runs, not reloaded; v2 can then be activated.
    for _ in 0..2 {
        base_again(&mut c).await;
        let p = n.check_truth(&mut c).await.unwrap();
        expect_done(&n.root, Call::LoadV2, Some(&p), &n.tag);
        assert_eq!(ids(&p, "v1"), ids(&before, "v1"), "{}: v1 reloaded", n.tag);
        assert_eq!(
            p.revisions[0].sha256, before.revisions[0].sha256,
            "{}",
            n.tag
        );
        assert_eq!(
            p.revisions[0].revision_token, before.revisions[0].revision_token,
            "{}: v1's token",
            n.tag
        );
    }
    send(&mut c, Call::ActivateV2).await.unwrap();
    let p = n.check_truth(&mut c).await;
    expect_done(&n.root, Call::ActivateV2, p.as_ref(), &n.tag);
    n.unload_all(&mut c).await;
}

/// The desired state again, as the operator resends it: v1 and v2 loaded,
/// v1 active.
async fn base_again(c: &mut Client) {
    c.load(syscount("v1", objs::SYSCOUNT_V1)).await.unwrap();
    c.load(syscount("v2", objs::SYSCOUNT_V2)).await.unwrap();
    c.activate(activate("v1")).await.unwrap();
}

#[tokio::test]
async fn state_file_truncated() {
    damaged_state("truncated", |p| {
        let bytes = std::fs::read(p).unwrap();
        std::fs::write(p, &bytes[..bytes.len() / 3]).unwrap();
    })
    .await;
}

#[tokio::test]
async fn state_file_empty() {
    damaged_state("empty", |p| std::fs::write(p, b"").unwrap()).await;
}

#[tokio::test]
async fn state_file_garbage() {
    damaged_state("garbage", |p| {
        std::fs::write(p, b"\0\0\0\0{\"version\": 1, \"progr\x7fams\"").unwrap();
    })
    .await;
}

/// After the state file is lost, a Load that names the running revision
/// but carries other code is refused: only Unload may stop what runs.
#[tokio::test]
async fn state_file_lost_other_code_under_the_running_name_is_refused() {
    let mut n = Node::new("other-code");
    n.tag = "state file lost, other code".into();
    let mut c = n.start(None).await;
    base(&mut c, Call::ActivateV2).await;
    let before = n.check_truth(&mut c).await.unwrap();
    drop(c);
    n.agent.as_mut().unwrap().kill9();
    n.agent = None;
    std::fs::remove_file(n.root.state_file()).unwrap();

    let mut c = n.start(None).await;
    let mut other = syscount("v1", objs::SYSCOUNT_V2);
    other.revision = "v1".into();
    let e = c.load(other).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("not this object's"), "{e}");
    let p = n.check_truth(&mut c).await.unwrap();
    assert_eq!(p.active_revision, "v1");
    assert_eq!(p.revisions[0].prog_ids, before.revisions[0].prog_ids);
    assert_eq!(counting(&n.root), "v1");
    n.unload_all(&mut c).await;
}

/// An unknown fault name stops the start with an error naming it.
#[test]
fn an_unknown_fault_point_is_refused_at_start() {
    let root = PinRoot::new("crash-unknown");
    let out = Command::new(env!("CARGO_BIN_EXE_bpfleet-agent"))
        .arg("serve")
        .args(root.files().serve_args())
        .env("BPFLEET_FAULT", "load.nowhere")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("BPFLEET_FAULT=load.nowhere: no such fault point"),
        "{err}"
    );
    assert!(root.pins().is_empty());
}
