//! Hook kinds other than tracepoints behind the agent, against the real
//! kernel with the agent core in-process: a raw tracepoint and a uprobe
//! (both behind the agent's dispatcher), and cgroup_skb, switched by
//! updating its link in place. Needs root and a cgroup2 mount.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bpfleet_agent::Agent;
use bpfleet_bpf as objs;
use bpfleet_proto::v1::HookKind;
use bpfleet_testsupport::cgroup::Cgroup;
use common::*;

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
    let cg = Cgroup::new(format!("bpfleet-test-{}", std::process::id()).as_ref());
    let pkts = root.path.join("cgcount/_map_cgpkts");
    let target = cg.path.display().to_string();
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
    udp_from(&cg.path, 200);
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
    udp_from(&cg.path, 100);
    assert_eq!(slots(&pkts), [200, 100, 0, 300]);
    let after = link(&a);
    assert_eq!(
        before.0, after.0,
        "the cgroup link must be updated in place"
    );
    assert_ne!(before.1, after.1);
    a.rollback("cgcount", "", "t").unwrap();
    udp_from(&cg.path, 50);
    assert_eq!(slots(&pkts), [250, 100, 0, 350]);
    a.unload("cgcount", "", "t").unwrap();
    assert!(root.pins().is_empty(), "{:?}", root.pins());
}
