//! A persistent map declared to be recreated (`recreate_incompatible_maps`)
//! when a revision changes its layout, on the real kernel with the agent
//! core in-process: the new revision gets a fresh map at the shared pin,
//! the old revision keeps the old map (pinned in its own directory) with
//! its contents, across a restart and a rollback; unloading the new
//! revision puts the old map back at the shared pin; unloading everything
//! leaves no pin and no program. syscount v1 holds `u64` counters in
//! `counts`, the reshaped revision two `u32` halves at the same size.
//! Needs root (the agent needs bpffs).

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use bpfleet_bpf as objs;
use common::*;
use libbpf_rs::MapCore;

fn map_id(pin: &Path) -> u32 {
    libbpf_rs::MapHandle::from_pinned_path(pin)
        .unwrap_or_else(|e| panic!("open {}: {e}", pin.display()))
        .info()
        .unwrap()
        .info
        .id
}

/// Whether map `id` still exists (freed maps go after an RCU grace
/// period, so this waits up to 5 s for it to go).
fn map_exists(id: u32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while libbpf_rs::MapHandle::from_map_id(id).is_ok() {
        if std::time::Instant::now() > deadline {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

fn reshaped(revision: &str) -> bpfleet_proto::v1::LoadRequest {
    let mut r = syscount(revision, objs::SYSCOUNT_RESHAPED);
    r.recreate_incompatible_maps = vec!["counts".into()];
    r
}

fn prog_ids(a: &bpfleet_agent::Agent) -> Vec<u32> {
    a.list("syscount")
        .unwrap()
        .iter()
        .flat_map(|p| p.revisions.iter())
        .flat_map(|r| r.prog_ids.iter().copied())
        .collect()
}

#[test]
fn a_recreated_map_keeps_the_old_one_for_rollback_and_comes_back_on_unload() {
    let root = PinRoot::new("recreate");
    let shared = root.path.join("syscount/_map_counts");
    let kept = root.path.join("syscount/v1/map_counts");
    let mut a = agent(&root);
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    a.update_config(&only_thread("syscount", gettid()), "t")
        .unwrap();
    a.activate("syscount", "v1", "t").unwrap();
    getppid_n(10);
    assert_eq!(slots(&shared), [10, 0, 0, 10]);
    let old_id = map_id(&shared);

    // Without the declaration the other layout is refused, with the diff.
    let e = a
        .load(syscount("v2", objs::SYSCOUNT_RESHAPED), "t")
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("value: u64 -> struct count_pair (8 bytes)"),
        "{e}"
    );

    // With it: v2 loads on a fresh map; v1 keeps the old one, pinned in its
    // directory, its counts untouched.
    a.load(reshaped("v2"), "t").unwrap();
    let new_id = map_id(&shared);
    assert_ne!(new_id, old_id);
    assert_eq!(map_id(&kept), old_id);
    assert_eq!(slots(&kept), [10, 0, 0, 10]);
    assert_eq!(slots(&shared), [0, 0, 0, 0], "the new map starts empty");
    let audit = std::fs::read_to_string(root.audit_log()).unwrap();
    assert!(
        audit.contains("recreated map counts (pinned -> this revision: value: u64 -> struct count_pair (8 bytes)) old map id")
            && audit.contains("kept by v1"),
        "{audit}"
    );

    // v2 runs and counts into the new map; the old one is left alone.
    a.activate("syscount", "v2", "t").unwrap();
    getppid_n(5);
    assert!(slot(&shared, 0) & 0xffff_ffff >= 5, "{:?}", slots(&shared));
    assert_eq!(slots(&kept), [10, 0, 0, 10]);

    // A restart finds both maps where they were (state file + pins).
    drop(a);
    let mut a = agent(&root);
    assert_eq!(map_id(&kept), old_id);
    assert_eq!(map_id(&shared), new_id);

    // Rollback: v1 counts on into its old map, from where it was.
    a.rollback("syscount", "", "t").unwrap();
    getppid_n(7);
    assert_eq!(slots(&kept), [17, 0, 0, 17]);

    // Unloading v2 puts the old map back at the shared pin, still v1's.
    let v2_progs: Vec<u32> = prog_ids(&a);
    a.unload("syscount", "v2", "t").unwrap();
    assert!(!kept.exists());
    assert_eq!(map_id(&shared), old_id);
    getppid_n(3);
    assert_eq!(slots(&shared), [20, 0, 0, 20]);
    let audit = std::fs::read_to_string(root.audit_log()).unwrap();
    assert!(
        audit.contains("the old map of v1 (used by v1) is shared again"),
        "{audit}"
    );
    // The old layout is what later loads are compared with: v1's kind
    // shares it, the reshaped one is refused again without the declaration.
    a.load(syscount("v3", objs::SYSCOUNT_V2), "t").unwrap();
    assert!(
        a.load(syscount("v4", objs::SYSCOUNT_RESHAPED), "t")
            .is_err()
    );

    let ids = prog_ids(&a);
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty(), "{:?}", root.pins());
    for id in ids.into_iter().chain(v2_progs) {
        assert!(!prog_exists(id), "program {id} still loaded");
    }
    assert!(!map_exists(old_id) && !map_exists(new_id));
}

#[test]
fn unloading_the_old_revision_frees_the_old_map() {
    let root = PinRoot::new("recreate-old");
    let shared = root.path.join("syscount/_map_counts");
    let kept = root.path.join("syscount/v1/map_counts");
    let mut a = agent(&root);
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    a.activate("syscount", "v1", "t").unwrap();
    let old_id = map_id(&shared);
    a.load(reshaped("v2"), "t").unwrap();
    a.activate("syscount", "v2", "t").unwrap();
    assert_eq!(map_id(&kept), old_id);
    a.unload("syscount", "v1", "t").unwrap();
    assert!(!kept.exists() && !root.path.join("syscount/v1").exists());
    assert_ne!(map_id(&shared), old_id, "the shared pin stays v2's");
    assert!(!map_exists(old_id), "the old map is freed");
    // A revision of the new layout shares the new map.
    a.load(syscount("v3", objs::SYSCOUNT_RESHAPED), "t")
        .unwrap();
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty(), "{:?}", root.pins());
}

#[test]
fn a_failed_load_puts_the_old_map_back() {
    let root = PinRoot::new("recreate-fail");
    let shared = root.path.join("syscount/_map_counts");
    let mut a = agent(&root);
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    let old_id = map_id(&shared);
    let pins = root.pins();
    // Refused after the old map moved aside (the program is missing).
    let mut r = reshaped("v2");
    r.entries[0].bpf_program = "nope".into();
    assert!(a.load(r, "t").is_err());
    let mut r = reshaped("v2");
    r.budget = Some(bpfleet_proto::v1::Budget {
        max_map_memory_bytes: 1,
        ..Default::default()
    });
    assert!(a.load(r, "t").is_err());
    assert_eq!(root.pins(), pins);
    assert_eq!(map_id(&shared), old_id);
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty(), "{:?}", root.pins());
}

/// Without the state file the pins alone tell the story: v1's old map in
/// its directory next to the shared pin is v1's kept map; a recreation a
/// crash stopped halfway (the old map still at its waiting pin) is placed
/// with the revisions that use it at the next start.
#[test]
fn adoption_finds_the_old_maps_from_the_pins() {
    let root = PinRoot::new("recreate-adopt");
    let shared = root.path.join("syscount/_map_counts");
    let kept = root.path.join("syscount/v1/map_counts");
    let mut a = agent(&root);
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    a.update_config(&only_thread("syscount", gettid()), "t")
        .unwrap();
    a.activate("syscount", "v1", "t").unwrap();
    getppid_n(4);
    let old_id = map_id(&shared);
    a.load(reshaped("v2"), "t").unwrap();
    drop(a);
    std::fs::remove_file(root.state_file()).unwrap();
    let mut a = agent(&root);
    // The operator's Load claims the running v1 (an orphan now); the
    // orphan v2 goes and v1 runs on, its old map at the shared pin again.
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    a.unload("syscount", "v2", "t").unwrap();
    assert_eq!(map_id(&shared), old_id, "the old map is shared again");
    assert!(!kept.exists());
    getppid_n(1);
    assert_eq!(slots(&shared), [5, 0, 0, 5]);

    // Interrupted: the old map waits at `_old_map_counts`.
    let waiting = root.path.join("syscount/_old_map_counts");
    std::fs::rename(&shared, &waiting).unwrap();
    drop(a);
    let mut a = agent(&root);
    assert!(!waiting.exists());
    assert_eq!(map_id(&kept), old_id, "placed with v1, which uses it");
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty(), "{:?}", root.pins());
    assert!(!map_exists(old_id));
}
