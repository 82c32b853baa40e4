//! What the agent refuses before anything reaches the kernel, with the
//! agent core in-process on the real kernel: digest and signature checks
//! (and a signed object that loads), malformed and unsupported requests,
//! a persistent map whose shape changed, budgets. Each test also checks
//! that a refusal left nothing pinned. Needs root (the agent needs bpffs).

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bpfleet_agent::{Agent, Config, Error};
use bpfleet_bpf as objs;
use bpfleet_proto::v1::HookKind;
use common::*;

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

/// Same sizes, another shape: `counts` of syscount v1 holds `u64`
/// values, the reshaped revision reads the same 8 bytes as a struct of two
/// `u32`. Refused naming the difference from the kernel's BTF of the
/// pinned map; the running revision and its map are left as they were.
#[test]
fn a_persistent_map_reshaped_at_the_same_size_is_refused_with_the_difference() {
    let root = PinRoot::new("reshaped");
    let mut a = agent(&root);
    a.load(syscount("v1", objs::SYSCOUNT_V1), "t").unwrap();
    a.update_config(&only_thread("syscount", gettid()), "t")
        .unwrap();
    a.activate("syscount", "v1", "t").unwrap();
    let pins = root.pins();
    let e = a
        .load(syscount("v2", objs::SYSCOUNT_RESHAPED), "t")
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("map counts is incompatible with the pinned one")
            && text.contains("value: u64 -> struct count_pair (8 bytes)")
            && !text.contains("value_size"),
        "{text}"
    );
    assert_eq!(
        tonic::Status::from(e).code(),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(root.pins(), pins, "a refused load changed the pins");
    // v1 still counts into its map.
    let counts = root.path.join("syscount/_map_counts");
    let before = slots(&counts)[0];
    getppid_n(10);
    assert_eq!(slots(&counts)[0], before + 10);
    // Compatible shapes still share: v2 (the same u64 counters) loads.
    a.load(syscount("v2", objs::SYSCOUNT_V2), "t").unwrap();
    a.unload("syscount", "", "t").unwrap();
    assert!(root.pins().is_empty(), "{:?}", root.pins());
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
        ..Default::default()
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

/// A TracerPolicy's budgets (the Load's `budget.group`): the programs
/// loaded with the same group share `maxPrograms` and `maxMapMemory` on
/// the node; the refusal names the policy and the budget, loads nothing,
/// and a program of no group is not counted.
#[test]
fn a_policys_budgets_are_shared_by_its_programs() {
    let root = PinRoot::new("groupbudget");
    let mut cfg = Config::new(&root.path, root.state_file());
    cfg.allow_unsigned = true;
    let mut a = Agent::new(cfg).unwrap();
    let grouped = |program: &str, max_programs: u32, max_map: u64| {
        let mut r = syscount("v1", objs::SYSCOUNT_V1);
        r.program = program.into();
        r.budget = Some(bpfleet_proto::v1::Budget {
            group: "pol".into(),
            group_max_programs: max_programs,
            group_max_map_memory_bytes: max_map,
            ..Default::default()
        });
        r
    };
    a.load(grouped("first", 1, 0), "t").unwrap();
    // Not of the group: not counted.
    let mut loose = syscount("v1", objs::SYSCOUNT_V1);
    loose.program = "loose".into();
    a.load(loose, "t").unwrap();
    let pins = root.pins();
    let e = a.load(grouped("second", 1, 0), "t").unwrap_err();
    assert!(matches!(e, Error::Budget(_)), "{e}");
    let m = e.to_string();
    assert!(
        m.contains("TracerPolicy pol's budget maxPrograms is 1") && m.contains("(first)"),
        "{m}"
    );
    assert_eq!(root.pins(), pins, "nothing of the refused load stays");
    // Map memory: the object's new maps need about 1 KB by the agent's
    // estimate, while `first` holds tens of KB as the kernel accounts
    // them. 20000 bytes would fit the new program alone; with `first`
    // counted against the same budget, nothing is left.
    let e = a.load(grouped("second", 2, 20_000), "t").unwrap_err();
    let m = e.to_string();
    assert!(
        matches!(e, Error::Budget(_))
            && m.contains("TracerPolicy pol's budget maxMapMemory (20000 bytes"),
        "{m}"
    );
    assert_eq!(root.pins(), pins);
    // The same budget for a program of another group: it fits.
    let mut other = grouped("other", 2, 20_000);
    other.budget.as_mut().unwrap().group = "another".into();
    a.load(other, "t").unwrap();
    // Room for both: loaded.
    a.load(grouped("second", 2, 1 << 30), "t").unwrap();
    for p in ["first", "second", "loose", "other"] {
        a.unload(p, "", "t").unwrap();
    }
    assert!(root.pins().is_empty(), "{:?}", root.pins());
}
