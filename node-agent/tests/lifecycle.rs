//! Lifecycle of dispatched (tracepoint) programs against the real kernel, with
//! the agent core in-process: load inactive, activate, switch under load
//! without losing events, roll back, idempotent loads and immutable
//! revisions, the shared policy maps, verifier rejection, unload. Refusals
//! before anything loads are in `admission.rs`, other hook kinds in
//! `hook_kinds.rs`, restarts and adoption in `restart.rs`. Needs root.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bpfleet_agent::Error;
use bpfleet_bpf as objs;
use bpfleet_proto::v1::RevisionState;
use common::*;

#[test]
fn switch_and_rollback_under_load_lose_no_event() {
    let root = PinRoot::new("switch");
    let mut a = agent(&root);
    let counts = root.path.join("syscount/_map_counts");
    let tid = gettid();

    let (info, created) = a.load(syscount("v1", objs::SYSCOUNT_V1), "test").unwrap();
    assert!(created);
    assert_eq!(info.state, RevisionState::Inactive as i32);
    a.update_config(&only_thread("syscount", tid), "test")
        .unwrap();

    // Loaded but inactive: the dispatcher is attached with an empty slot,
    // nothing counts.
    getppid_n(500);
    assert_eq!(slots(&counts), [0, 0, 0, 0]);

    a.activate("syscount", "v1", "test").unwrap();
    getppid_n(1000);
    assert_eq!(slots(&counts), [1000, 0, 0, 1000]);

    // v2 loaded next to v1: inactive, so it does not count.
    let (v2, _) = a.load(syscount("v2", objs::SYSCOUNT_V2), "test").unwrap();
    assert_eq!(v2.state, RevisionState::Inactive as i32);
    getppid_n(1000);
    assert_eq!(slots(&counts), [2000, 0, 0, 2000]);
    // The kernel's figures: v1 ran (behind the dispatcher), v2 never did.
    let st = a.stats("syscount").unwrap();
    let runs = |st: &bpfleet_proto::v1::StatsResponse, r: &str| {
        st.revisions
            .iter()
            .find(|x| x.revision == r)
            .map(|x| x.run_cnt)
            .unwrap()
    };
    assert!(runs(&st, "v1") >= 2000, "{st:?}");
    assert_eq!(runs(&st, "v2"), 0, "{st:?}");

    // Switch back and forth many times while another thread drives events:
    // every event is counted by exactly one revision, none by both or
    // neither, however the switches fall between events.
    let (tx, rx) = std::sync::mpsc::channel();
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let still = running.clone();
    let driver = std::thread::spawn(move || {
        tx.send(gettid()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        getppid_n(400_000);
        still.store(false, std::sync::atomic::Ordering::SeqCst);
    });
    let driver_tid = rx.recv().unwrap();
    a.update_config(&only_thread("syscount", driver_tid), "test")
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(80));
    let s = a.activate("syscount", "v2", "test").unwrap();
    assert_eq!((s.previous.as_str(), s.active.as_str()), ("v1", "v2"));
    let mut switches = 1;
    while running.load(std::sync::atomic::Ordering::SeqCst) {
        let to = if switches % 2 == 0 { "v2" } else { "v1" };
        a.activate("syscount", to, "test").unwrap();
        switches += 1;
    }
    driver.join().unwrap();
    if switches % 2 == 0 {
        a.activate("syscount", "v2", "test").unwrap();
    }
    let c = slots(&counts);
    eprintln!("{switches} switches under load: {c:?}");
    assert_eq!(
        c[0] + c[1],
        2000 + 400_000,
        "lost or doubled events over {switches} switches: {c:?}"
    );
    assert!(
        switches >= 100 && c[0] > 2000 && c[1] > 0,
        "the switches did not happen under load ({switches}): {c:?}"
    );

    // After the switch only v2 counts; the persistent total kept growing.
    a.update_config(&only_thread("syscount", tid), "test")
        .unwrap();
    let before = slots(&counts);
    getppid_n(1000);
    let after = slots(&counts);
    assert_eq!(after[0], before[0], "v1 still counts after the switch");
    assert_eq!(after[1], before[1] + 1000);
    assert_eq!(after[3], before[3] + 1000);

    // Rollback: v1 counts again, v2 stops.
    let r = a.rollback("syscount", "", "test").unwrap();
    assert_eq!(r.active, "v1");
    getppid_n(700);
    let rb = slots(&counts);
    assert_eq!(rb[0], after[0] + 700);
    assert_eq!(rb[1], after[1]);

    // Kernel stats see both revisions run.
    let st = a.stats("syscount").unwrap();
    assert!(st.stats_enabled);
    for r in &st.revisions {
        assert!(r.run_cnt > 0, "{r:?}");
        assert!(r.map_memory_bytes > 0, "{r:?}");
        // Built with bpfleet_gate.h's slot 1: they count losses, and lose
        // nothing.
        assert_eq!(r.events_lost, Some(0), "{r:?}");
    }

    // Unload the inactive revision, then the program: every pin goes.
    let removed = a.unload("syscount", "v2", "test").unwrap();
    assert!(
        removed.iter().all(|p| p.contains("/syscount/v2/")),
        "{removed:?}"
    );
    let ids: Vec<u32> = a.list("syscount").unwrap()[0]
        .revisions
        .iter()
        .flat_map(|r| r.prog_ids.clone())
        .collect();
    assert!(!ids.is_empty());
    a.unload("syscount", "", "test").unwrap();
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
    assert!(!root.path.join("syscount").exists());
    for id in ids {
        assert!(!prog_exists(id), "program {id} still loaded");
    }
    // Every mutation was audited.
    let audit = std::fs::read_to_string(root.audit_log()).unwrap();
    for action in [
        "\"load\"",
        "\"activate\"",
        "\"rollback\"",
        "\"unload\"",
        "\"update_config\"",
    ] {
        assert!(audit.contains(action), "{action} missing from audit log");
    }
}

#[test]
fn load_is_idempotent_and_revisions_are_immutable() {
    let root = PinRoot::new("idem");
    let mut a = agent(&root);
    let (first, c1) = a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    let (again, c2) = a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    assert!(c1 && !c2);
    assert_eq!(first.prog_ids, again.prog_ids);
    let e = a.load(syscount("v1", objs::SYSCOUNT_V2), "t").unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
    // Activating twice is a no-op.
    a.activate("syscount", "v1", "t").unwrap();
    assert_eq!(a.activate("syscount", "v1", "t").unwrap().nanos, 0);
    // Unloading what is not there succeeds.
    assert!(a.unload("syscount", "nope", "t").unwrap().is_empty());
    assert!(a.unload("absent", "", "t").unwrap().is_empty());
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty());
}

/// The TracerPolicy maps of `bpfleet_gate.h`: shared by both revisions,
/// replaced whole on request, reported by List; replace is refused on the
/// config array.
#[test]
fn policy_maps_are_shared_replaced_and_listed() {
    use bpfleet_proto::v1 as pb;
    let root = PinRoot::new("policy");
    let mut a = agent(&root);
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    a.load(syscount("v2", objs::SYSCOUNT_V2), "t").unwrap();
    let entry = |k: Vec<u8>, v: Vec<u8>| pb::ConfigEntry { key: k, value: v };
    let ports = |ps: &[u16]| ports_write("syscount", ps, true);
    let written = a.update_config(&ports(&[80, 8080]), "t").unwrap();
    assert_eq!(
        written.len(),
        1,
        "one map shared by both revisions: {written:?}"
    );
    a.update_config(&ports(&[8080, 9090]), "t").unwrap();
    let m = libbpf_rs::MapHandle::from_pinned_path(&written[0]).unwrap();
    use libbpf_rs::MapCore;
    let mut keys: Vec<u16> = m
        .keys()
        .map(|k| u16::from_ne_bytes(k.try_into().unwrap()))
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, [8080, 9090], "80 replaced away");
    a.update_config(&ports(&[]), "t").unwrap();
    assert_eq!(m.keys().count(), 0, "replace with nothing empties the map");

    let slot = |k: u32, v: u64| entry(k.to_ne_bytes().to_vec(), v.to_ne_bytes().to_vec());
    a.update_config(
        &pb::UpdateConfigRequest {
            program: "syscount".into(),
            map: String::new(),
            entries: vec![slot(8, 250_000), slot(15, 77)],
            replace: false,
            namespaces: None,
            tracer_rules: None,
            cpu_budget: None,
            alerts: None,
        },
        "t",
    )
    .unwrap();
    let listed = a.list("syscount").unwrap();
    assert_eq!(listed[0].config.len(), 16);
    assert_eq!((listed[0].config[8], listed[0].config[15]), (250_000, 77));

    let e = a
        .update_config(
            &pb::UpdateConfigRequest {
                program: "syscount".into(),
                map: String::new(),
                entries: vec![],
                replace: true,
                namespaces: None,
                tracer_rules: None,
                cpu_budget: None,
                alerts: None,
            },
            "t",
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("only hash maps can be replaced"),
        "{e}"
    );
    let e = a
        .update_config(
            &pb::UpdateConfigRequest {
                program: "syscount".into(),
                map: "bpfleet_pids".into(),
                entries: vec![],
                replace: false,
                namespaces: None,
                tracer_rules: None,
                cpu_budget: None,
                alerts: None,
            },
            "t",
        )
        .unwrap_err();
    assert!(e.to_string().contains("0 only with replace"), "{e}");
    a.unload("syscount", "", "t").unwrap();
    assert!(
        root.pins().is_empty(),
        "shared policy maps go with the program"
    );
}

#[test]
fn verifier_rejection_reports_the_log_and_leaves_the_running_revision_alone() {
    let root = PinRoot::new("verifier");
    let mut a = agent(&root);
    let counts = root.path.join("syscount/_map_counts");
    let tid = gettid();
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    a.update_config(&only_thread("syscount", tid), "t").unwrap();
    a.activate("syscount", "v1", "t").unwrap();
    let pins_before = root.pins();

    let e = a
        .load(syscount("bad", objs::SYSCOUNT_BAD), "t")
        .unwrap_err();
    let Error::Verifier { program, log } = &e else {
        panic!("not a verifier error: {e}")
    };
    assert_eq!(program, "count_getppid");
    assert!(
        log.contains("invalid mem access") || log.contains("map_value_or_null"),
        "{log}"
    );
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);

    assert_eq!(
        root.pins(),
        pins_before,
        "a failed load left or removed pins"
    );
    let before = slots(&counts);
    getppid_n(100);
    assert_eq!(slots(&counts)[0], before[0] + 100, "v1 stopped counting");
    assert_eq!(a.list("syscount").unwrap()[0].active_revision, "v1");
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty());
}
