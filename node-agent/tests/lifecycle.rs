//! Lifecycle of dispatched (tracepoint) programs against the real kernel, with
//! the agent core in-process: load inactive, activate, switch under load
//! without losing events, roll back, persistent map, verifier rejection,
//! trust refusals, malformed requests, unload.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bpfleet_agent::{Agent, Config, Error};
use bpfleet_bpf as objs;
use bpfleet_proto::v1::{HookKind, RevisionState};
use common::*;

fn agent(root: &PinRoot) -> Agent {
    let mut cfg = Config::new(&root.path, root.state_file());
    cfg.allow_unsigned = true;
    cfg.audit_log = Some(root.audit_log());
    Agent::new(cfg).expect("agent starts")
}

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
    let ports = |ps: &[u16]| pb::UpdateConfigRequest {
        program: "syscount".into(),
        map: "bpfleet_ports".into(),
        entries: ps
            .iter()
            .map(|p| entry(p.to_ne_bytes().to_vec(), vec![1]))
            .collect(),
        replace: true,
        namespaces: None,
    };
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

#[test]
fn trust_checks_refuse_before_anything_is_loaded() {
    let root = PinRoot::new("trust");
    let mut cfg = Config::new(&root.path, root.state_file());
    cfg.allow_unsigned = false;
    let mut a = Agent::new(cfg).unwrap();

    let mut tampered = syscount("v1", objs::SYSCOUNT_V1);
    tampered.sha256 = bpfleet_agent::trust::sha256_hex(objs::SYSCOUNT_V2);
    let e = a.load(tampered, "t").unwrap_err();
    assert!(e.to_string().contains("sha256 mismatch"), "{e}");

    let e = a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap_err();
    assert!(e.to_string().contains("unsigned"), "{e}");

    let mut badsig = syscount("v1", objs::SYSCOUNT_V1);
    badsig.signature = "MEUCIQDx".into();
    assert!(matches!(a.load(badsig, "t").unwrap_err(), Error::Denied(_)));

    assert!(root.pins().is_empty(), "{:?}", root.pins());
    assert!(a.list("").unwrap().is_empty());
}

#[test]
fn signed_objects_load_with_a_trusted_key() {
    use base64::Engine;
    use p256::ecdsa::{Signature, SigningKey, signature::Signer};
    use p256::pkcs8::{EncodePublicKey, LineEnding};
    let root = PinRoot::new("signed");
    let sk = SigningKey::from_slice(&[42u8; 32]).unwrap();
    let pem = sk
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let mut cfg = Config::new(&root.path, root.state_file());
    cfg.trusted_keys = vec![("test".into(), pem)];
    let mut a = Agent::new(cfg).unwrap();
    let sig: Signature = sk.sign(objs::SYSCOUNT_V1);
    let mut req = syscount("v1", objs::SYSCOUNT_V1);
    req.signature = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
    a.load(req.clone(), "t").unwrap();
    // The same signature does not cover other bytes.
    let mut other = syscount("v2", objs::SYSCOUNT_V2);
    other.signature = req.signature.clone();
    assert!(matches!(a.load(other, "t").unwrap_err(), Error::Denied(_)));
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty());
}

#[test]
fn malformed_and_unsupported_requests_get_clear_errors() {
    let root = PinRoot::new("malformed");
    let mut a = agent(&root);
    let ok = syscount("v1", objs::SYSCOUNT_V1);

    let mut r = ok.clone();
    r.program = String::new();
    assert!(
        a.load(r, "t")
            .unwrap_err()
            .to_string()
            .contains("program name is empty")
    );
    let mut r = ok.clone();
    r.revision = "../../etc".into();
    assert!(matches!(a.load(r, "t").unwrap_err(), Error::Invalid(_)));
    let mut r = ok.clone();
    r.entries.clear();
    assert!(
        a.load(r, "t")
            .unwrap_err()
            .to_string()
            .contains("at least one program entry")
    );
    let mut r = ok.clone();
    r.entries[0].hook = 4242;
    assert!(
        a.load(r, "t")
            .unwrap_err()
            .to_string()
            .contains("unknown hook kind 4242")
    );
    let mut r = ok.clone();
    r.source = Some(bpfleet_proto::v1::load_request::Source::Object(
        vec![0u8; 17 << 20],
    ));
    assert!(a.load(r, "t").unwrap_err().to_string().contains("at most"));
    let mut r = ok.clone();
    r.source = Some(bpfleet_proto::v1::load_request::Source::Object(
        b"not an elf".to_vec(),
    ));
    r.sha256 = bpfleet_agent::trust::sha256_hex(b"not an elf");
    assert!(
        a.load(r, "t")
            .unwrap_err()
            .to_string()
            .contains("not a loadable BPF ELF")
    );
    let mut r = ok.clone();
    r.entries[0].bpf_program = "nope".into();
    assert!(
        a.load(r, "t")
            .unwrap_err()
            .to_string()
            .contains("no BPF program named nope")
    );
    let mut r = ok.clone();
    r.entries[0].hook = HookKind::Xdp as i32;
    assert!(
        a.load(r, "t")
            .unwrap_err()
            .to_string()
            .contains("needs Xdp")
    );
    let mut r = ok.clone();
    r.persistent_maps = vec!["missing".into()];
    assert!(
        a.load(r, "t")
            .unwrap_err()
            .to_string()
            .contains("persistent map missing is not in the object")
    );

    // Hooks this kernel lacks.
    let r = load_req(
        "probe",
        "v1",
        objs::KPROBE_PROBE,
        vec![entry("on_open", HookKind::Kprobe, "do_sys_openat2")],
        &[],
    );
    let e = a.load(r, "t").unwrap_err();
    assert!(e.to_string().contains("unsupported on this node"), "{e}");
    assert_eq!(
        tonic::Status::from(e).code(),
        tonic::Code::FailedPrecondition
    );

    // Unknown program / revision.
    assert!(matches!(
        a.activate("ghost", "v1", "t").unwrap_err(),
        Error::NotFound(_)
    ));
    assert!(matches!(
        a.rollback("ghost", "", "t").unwrap_err(),
        Error::NotFound(_)
    ));

    assert!(root.pins().is_empty(), "{:?}", root.pins());
}

#[test]
fn incompatible_persistent_map_is_refused() {
    let root = PinRoot::new("incompat");
    let mut a = agent(&root);
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    // A program whose pinned `counts` has another shape than the one the
    // next revision declares: pin a map of another shape where the revision
    // expects `counts`.
    let pin = root.path.join("other/_map_counts");
    std::fs::create_dir_all(root.path.join("other")).unwrap();
    let mut m = libbpf_rs::MapHandle::create(
        libbpf_rs::MapType::Array,
        Some("counts"),
        4,
        16,
        4,
        &libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            ..Default::default()
        },
    )
    .unwrap();
    m.pin(&pin).unwrap();
    // Adopt it as an orphan program "other", then load a revision into it.
    drop(a);
    let mut a = agent(&root);
    let mut req = syscount("v1", objs::SYSCOUNT_V1);
    req.program = "other".into();
    let e = a.load(req, "t").unwrap_err();
    assert!(
        e.to_string().contains("incompatible with the pinned one")
            && e.to_string().contains("value_size 8 vs pinned 16"),
        "{e}"
    );
    a.unload("other", "", "t").unwrap();
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty(), "{:?}", root.pins());
}

#[test]
fn raw_tracepoint_revision_counts_behind_the_dispatcher() {
    let root = PinRoot::new("rawtp");
    let mut a = agent(&root);
    let counts = root.path.join("rawcount/_map_counts");
    let req = load_req(
        "rawcount",
        "v1",
        objs::SYSCOUNT_RAW,
        vec![entry("count_raw", HookKind::RawTracepoint, "sys_enter")],
        &["counts"],
    );
    a.load(req, "t").unwrap();
    a.update_config(&only_thread("rawcount", gettid()), "t")
        .unwrap();
    getppid_n(100);
    assert_eq!(slot(&counts, 2), 0, "inactive raw tracepoint counted");
    a.activate("rawcount", "v1", "t").unwrap();
    getppid_n(100);
    assert_eq!(slot(&counts, 2), 100);
    a.unload("rawcount", "", "t").unwrap();
    assert!(root.pins().is_empty());
}

#[test]
fn budgets_refuse_before_load() {
    let root = PinRoot::new("budget");
    let mut cfg = Config::new(&root.path, root.state_file());
    cfg.allow_unsigned = true;
    cfg.max_programs = 1;
    cfg.max_revisions = 1;
    let mut a = Agent::new(cfg).unwrap();
    let mut tiny = syscount("v1", objs::SYSCOUNT_V1);
    tiny.budget = Some(bpfleet_proto::v1::Budget {
        max_map_memory_bytes: 64,
    });
    let e = a.load(tiny, "t").unwrap_err();
    assert!(matches!(e, Error::Budget(_)), "{e}");
    assert!(root.pins().is_empty(), "{:?}", root.pins());
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    let e = a.load(syscount("v2", objs::SYSCOUNT_V2), "t").unwrap_err();
    assert!(e.to_string().contains("at most 1"), "{e}");
    let mut other = syscount("v1", objs::SYSCOUNT_V1);
    other.program = "second".into();
    let e = a.load(other, "t").unwrap_err();
    assert!(matches!(e, Error::Budget(_)), "{e}");
    assert_eq!(
        tonic::Status::from(e).code(),
        tonic::Code::ResourceExhausted
    );
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty());
}

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

/// Function the uprobe test probes (in this test binary).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn bpfleet_test_probe_target(x: u64) -> u64 {
    std::hint::black_box(x).wrapping_add(1)
}

#[test]
fn uprobe_revision_counts_calls_behind_the_dispatcher() {
    let root = PinRoot::new("uprobe");
    let mut a = agent(&root);
    let calls = root.path.join("ucount/_map_calls");
    let exe = std::env::current_exe().unwrap();
    let target = format!("{}:bpfleet_test_probe_target", exe.display());
    let req = load_req(
        "ucount",
        "v1",
        objs::UCOUNT,
        vec![entry("count_call", HookKind::Uprobe, &target)],
        &["calls"],
    );
    a.load(req, "t").unwrap();
    a.update_config(&only_thread("ucount", gettid()), "t")
        .unwrap();
    for i in 0..50 {
        bpfleet_test_probe_target(i);
    }
    assert_eq!(slot(&calls, 0), 0, "inactive uprobe counted");
    a.activate("ucount", "v1", "t").unwrap();
    for i in 0..50 {
        bpfleet_test_probe_target(i);
    }
    assert_eq!(slot(&calls, 0), 50);
    a.unload("ucount", "", "t").unwrap();
    assert!(root.pins().is_empty());
}

struct Cgroup(std::path::PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn cgroup2_mount() -> std::path::PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| std::path::PathBuf::from(f[1]))
        .expect("a cgroup2 mount")
}

/// Sends `n` UDP datagrams to 127.0.0.1:9 from a shell inside `cg`.
fn udp_from(cg: &std::path::Path, n: u32) {
    let script = format!(
        "echo $$ > {}/cgroup.procs && for i in $(seq {n}); do echo x > /dev/udp/127.0.0.1/9; done",
        cg.display()
    );
    let st = std::process::Command::new("bash")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn cgroup_skb_switches_by_link_update() {
    let root = PinRoot::new("cgskb");
    let mut a = agent(&root);
    let cg = Cgroup(cgroup2_mount().join(format!("bpfleet-test-{}", std::process::id())));
    std::fs::create_dir_all(&cg.0).unwrap();
    let pkts = root.path.join("cgcount/_map_cgpkts");
    let target = cg.0.display().to_string();
    let cgreq = |rev: &str, obj: &[u8]| {
        load_req(
            "cgcount",
            rev,
            obj,
            vec![entry("cg_count", HookKind::CgroupSkbEgress, &target)],
            &["cgpkts"],
        )
    };
    a.load(cgreq("v1", objs::CGCOUNT_V1), "t").unwrap();
    a.load(cgreq("v2", objs::CGCOUNT_V2), "t").unwrap();
    a.activate("cgcount", "v1", "t").unwrap();
    udp_from(&cg.0, 200);
    assert_eq!(slots(&pkts), [200, 0, 0, 200]);
    let link = |a: &Agent| {
        a.list("cgcount").unwrap()[0]
            .revisions
            .iter()
            .flat_map(|r| r.links.clone())
            .find(|l| l.link_id != 0)
            .map(|l| (l.link_id, l.prog_id))
            .unwrap()
    };
    let before = link(&a);
    a.activate("cgcount", "v2", "t").unwrap();
    udp_from(&cg.0, 100);
    assert_eq!(slots(&pkts), [200, 100, 0, 300]);
    let after = link(&a);
    assert_eq!(
        before.0, after.0,
        "the cgroup link must be updated in place"
    );
    assert_ne!(before.1, after.1);
    a.rollback("cgcount", "", "t").unwrap();
    udp_from(&cg.0, 50);
    assert_eq!(slots(&pkts), [250, 100, 0, 350]);
    a.unload("cgcount", "", "t").unwrap();
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
