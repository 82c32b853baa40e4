//! The agent meeting a kernel it did not leave that way, with the agent
//! core in-process: a restart whose state file disagrees with the pins
//! (the kernel wins), a lost state file (pins adopted as orphans, then
//! unloadable), and pins of someone else's inside a program's directory
//! (left alone by Unload, reported by Health). Needs root.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bpfleet_bpf as objs;
use bpfleet_proto::v1::RevisionState;
use common::*;

#[test]
fn restart_follows_the_kernel_when_the_state_file_disagrees() {
    let root = PinRoot::new("reconcile");
    let mut a = agent(&root);
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    a.load(syscount("v2", objs::SYSCOUNT_V2), "t").unwrap();
    a.activate("syscount", "v1", "t").unwrap();
    a.activate("syscount", "v2", "t").unwrap();
    drop(a);
    // A stale state file (as after a crash before the last write).
    let text = std::fs::read_to_string(root.state_file()).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["programs"]["syscount"]["active"] = "v1".into();
    std::fs::write(root.state_file(), serde_json::to_vec(&v).unwrap()).unwrap();
    let mut a = agent(&root);
    let list = a.list("syscount").unwrap();
    assert_eq!(list[0].active_revision, "v2");
    assert!(a.health().ok, "{:?}", a.health());
    let on_disk = std::fs::read_to_string(root.state_file()).unwrap();
    let v: serde_json::Value = serde_json::from_str(&on_disk).unwrap();
    assert_eq!(
        v["programs"]["syscount"]["active"], "v2",
        "state file not reconciled"
    );
    // The dispatcher's slot still holds v2: v2 counts.
    let counts = root.path.join("syscount/_map_counts");
    a.update_config(&only_thread("syscount", gettid()), "t")
        .unwrap();
    let before = slots(&counts);
    getppid_n(10);
    assert_eq!(slots(&counts)[1], before[1] + 10);
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty());
}

#[test]
fn state_file_lost_pins_are_adopted_as_orphans_and_unloadable() {
    let root = PinRoot::new("orphan");
    let mut a = agent(&root);
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    a.activate("syscount", "v1", "t").unwrap();
    // A policy in force: its stamp in the config map, its namespace list
    // in the state file.
    a.update_config(
        &bpfleet_proto::v1::UpdateConfigRequest {
            program: "syscount".into(),
            map: String::new(),
            entries: vec![bpfleet_proto::v1::ConfigEntry {
                key: 15u32.to_ne_bytes().to_vec(),
                value: 7u64.to_ne_bytes().to_vec(),
            }],
            replace: false,
            namespaces: Some(bpfleet_proto::v1::NamespaceFilter {
                names: vec!["shop".into()],
            }),
            tracer_rules: None,
            cpu_budget: None,
            alerts: None,
        },
        "t",
    )
    .unwrap();
    let ids = a.list("syscount").unwrap()[0].revisions[0].prog_ids.clone();
    drop(a);
    std::fs::remove_file(root.state_file()).unwrap();
    let mut a = agent(&root);
    let list = a.list("").unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].revisions[0].state, RevisionState::Orphaned as i32);
    // The namespace list went with the state file: the stamp is cleared so
    // that the operator writes the whole policy again.
    assert_eq!((list[0].config[15], list[0].namespaces.len()), (0, 0));
    assert!(
        a.activate("syscount", "v1", "t")
            .unwrap_err()
            .to_string()
            .contains("orphan")
    );
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty(), "{:?}", root.pins());
    for id in ids {
        assert!(!prog_exists(id));
    }
}

/// With the state file lost, every revision is an orphan whose entries are
/// unknown. Unloading the inactive one must leave the dispatcher that the
/// active one runs behind: the program keeps counting.
#[test]
fn unloading_beside_an_adopted_active_revision_keeps_it_running() {
    let root = PinRoot::new("orphan-run");
    let mut a = agent(&root);
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    a.load(syscount("v2", objs::SYSCOUNT_V2), "t").unwrap();
    a.activate("syscount", "v1", "t").unwrap();
    drop(a);
    std::fs::remove_file(root.state_file()).unwrap();
    let mut a = agent(&root);
    a.unload("syscount", "v2", "t").unwrap();
    assert!(
        root.pins()
            .iter()
            .any(|p| p.to_string_lossy().contains("_link_")),
        "the dispatcher's link went: {:?}",
        root.pins()
    );
    a.update_config(&only_thread("syscount", gettid()), "t")
        .unwrap();
    let counts = root.path.join("syscount/_map_counts");
    let before = slots(&counts);
    getppid_n(10);
    assert_eq!(slots(&counts)[0], before[0] + 10, "v1 stopped counting");
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty(), "{:?}", root.pins());
}

#[test]
fn unload_leaves_pins_it_does_not_own() {
    let root = PinRoot::new("foreign");
    let mut a = agent(&root);
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    // Someone else pins a map inside the program's directory.
    let foreign = root.path.join("syscount/foreign");
    let mut m = libbpf_rs::MapHandle::create(
        libbpf_rs::MapType::Array,
        Some("foreign"),
        4,
        8,
        1,
        &libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        },
    )
    .unwrap();
    m.pin(&foreign).unwrap();
    let removed = a.unload("syscount", "", "t").unwrap();
    assert!(
        !removed.iter().any(|p| p.ends_with("/foreign")),
        "{removed:?}"
    );
    assert_eq!(root.pins(), vec![foreign.clone()]);
    let h = a.health();
    assert!(
        !h.ok && h.problems.iter().any(|p| p.contains("kept")),
        "{h:?}"
    );
    std::fs::remove_file(&foreign).unwrap();
}
