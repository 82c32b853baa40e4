//! The agent as a real process behind its gRPC API: XDP programs in a
//! network namespace of the test's own, atomic link-update switches under
//! traffic, `kill -9` with programs still running, restart and re-adoption,
//! Unload removing every pin, the Prometheus endpoint and the CLI.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bpfleet_bpf as objs;
use bpfleet_proto::v1::{self as pb, HookKind, RevisionState};
use common::*;

fn xdpcount(revision: &str, obj: &[u8]) -> pb::LoadRequest {
    load_req(
        "xdpcount",
        revision,
        obj,
        vec![entry("xdp_count", HookKind::Xdp, "veth1")],
        &["pkts"],
    )
}

async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xdp_switch_kill9_restart_and_unload() {
    let root = PinRoot::new("proc");
    let ns = Netns::with_veth("proc");
    let pkts = root.path.join("xdpcount/_map_pkts");
    let counts = root.path.join("syscount/_map_counts");
    let mut agent = AgentProc::start(&root, Some(&ns), &["--allow-unsigned"]);
    let mut c = agent.client().await;

    // XDP v1: loaded inactive means not attached; activation attaches.
    let r = c
        .load(xdpcount("v1", objs::XDPCOUNT_V1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.revision.unwrap().state, RevisionState::Inactive as i32);
    ns.send_frames(200);
    assert!(!pkts.exists() || slots(&pkts) == [0, 0, 0, 0]);
    c.activate(pb::ActivateRequest {
        program: "xdpcount".into(),
        revision: "v1".into(),
    })
    .await
    .unwrap();
    assert_eq!(ns.send_frames(500), 500);
    assert_eq!(slots(&pkts), [500, 0, 0, 500]);

    // v2 inactive does not count.
    c.load(xdpcount("v2", objs::XDPCOUNT_V2)).await.unwrap();
    ns.send_frames(500);
    assert_eq!(slots(&pkts), [1000, 0, 0, 1000]);
    let link_before = link_of(&mut c, "xdpcount").await;

    // Switch (the dispatcher's slot) while frames flow: none lost, none doubled.
    let path = ns.path();
    let sender = std::thread::spawn(move || send_frames_in(&path, 20_000));
    tokio::time::sleep(Duration::from_millis(60)).await;
    let s = c
        .activate(pb::ActivateRequest {
            program: "xdpcount".into(),
            revision: "v2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.previous_revision, "v1");
    let sent = sender.join().unwrap();
    let p = slots(&pkts);
    assert_eq!(p[0] + p[1], 1000 + sent, "lost or doubled frames: {p:?}");
    assert!(
        p[0] > 1000 && p[1] > 0,
        "switch did not happen under traffic: {p:?}"
    );
    let link_after = link_of(&mut c, "xdpcount").await;
    assert_eq!(
        link_before.0, link_after.0,
        "the link must be updated, not replaced"
    );
    assert_ne!(
        link_before.1, link_after.1,
        "the link still runs the old program"
    );

    // Rollback: v1 counts again.
    let r = c
        .rollback(pb::RollbackRequest {
            program: "xdpcount".into(),
            to_revision: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.active_revision, "v1");
    let before = slots(&pkts);
    ns.send_frames(300);
    let after = slots(&pkts);
    assert_eq!((after[0] - before[0], after[1] - before[1]), (300, 0));

    // A tracepoint program behind its dispatcher next to it.
    c.load(syscount("v1", objs::SYSCOUNT_V1)).await.unwrap();
    c.update_config(only_thread("syscount", gettid()))
        .await
        .unwrap();
    c.activate(pb::ActivateRequest {
        program: "syscount".into(),
        revision: "v1".into(),
    })
    .await
    .unwrap();
    getppid_n(100);
    assert_eq!(slot(&counts, 0), 100);

    // kill -9: programs keep running without the agent.
    drop(c);
    agent.kill9();
    let before = slots(&pkts);
    ns.send_frames(250);
    assert_eq!(
        slots(&pkts)[0],
        before[0] + 250,
        "XDP stopped with the agent"
    );
    getppid_n(50);
    assert_eq!(slot(&counts, 0), 150, "tracepoint stopped with the agent");

    // Restart: everything re-adopted, nothing dropped.
    let agent2 = AgentProc::start(&root, Some(&ns), &["--allow-unsigned"]);
    let mut c = agent2.client().await;
    let list = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let names: Vec<(&str, &str, usize)> = list
        .programs
        .iter()
        .map(|p| {
            (
                p.program.as_str(),
                p.active_revision.as_str(),
                p.revisions.len(),
            )
        })
        .collect();
    assert_eq!(names, vec![("syscount", "v1", 1), ("xdpcount", "v1", 2)]);
    let h = c.health(pb::HealthRequest {}).await.unwrap().into_inner();
    assert!(h.ok, "{h:?}");
    // Still switchable after the restart.
    c.activate(pb::ActivateRequest {
        program: "xdpcount".into(),
        revision: "v2".into(),
    })
    .await
    .unwrap();
    let before = slots(&pkts);
    ns.send_frames(100);
    assert_eq!(slots(&pkts)[1], before[1] + 100);

    // The CLI reaches every RPC through the same socket.
    let bin = env!("CARGO_BIN_EXE_bpfleet-agent");
    let sock = agent2.socket.to_str().unwrap().to_string();
    for args in [
        vec!["list"],
        vec!["stats", "--program", "xdpcount"],
        vec!["health"],
        vec!["node-info"],
    ] {
        let out = std::process::Command::new(bin)
            .args(&args)
            .args(["--socket", &sock])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty());
    }
    let out = std::process::Command::new(bin)
        .args(["rollback", "--program", "xdpcount", "--socket", &sock])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("active_revision: \"v1\""));

    // Unload removes every pin the agent owns, and the programs go.
    let ids: Vec<u32> = c
        .list(pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner()
        .programs
        .iter()
        .flat_map(|p| p.revisions.iter().flat_map(|r| r.prog_ids.clone()))
        .collect();
    assert_eq!(ids.len(), 3);
    for p in ["xdpcount", "syscount"] {
        let removed = c
            .unload(pb::UnloadRequest {
                program: p.into(),
                revision: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(!removed.removed_pins.is_empty());
    }
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
    for id in ids {
        assert!(!prog_exists(id), "program {id} still loaded");
    }
    // The audit log names the caller.
    let audit = std::fs::read_to_string(root.audit_log()).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"unload\"") && l.contains("unix:uid=0")),
        "{audit}"
    );
}

/// (link id, program id) of the program's XDP link.
async fn link_of(
    c: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
    program: &str,
) -> (u32, u32) {
    let l = c
        .list(pb::ListRequest {
            program: program.into(),
        })
        .await
        .unwrap()
        .into_inner();
    l.programs[0]
        .revisions
        .iter()
        .flat_map(|r| r.links.iter())
        .find(|l| l.link_id != 0)
        .map(|l| (l.link_id, l.prog_id))
        .expect("an attached link")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_grpc_requests_get_status_codes_not_panics() {
    let root = PinRoot::new("grpcbad");
    let port = free_port();
    let port_s = format!("127.0.0.1:{port}");
    let agent = AgentProc::start(
        &root,
        None,
        &["--allow-unsigned", "--metrics-listen", &port_s],
    );
    let mut c = agent.client().await;
    let e = c.load(pb::LoadRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("program name is empty"), "{e}");
    let mut r = syscount("v1", objs::SYSCOUNT_V1);
    r.source = None;
    let e = c.load(r).await.unwrap_err();
    assert!(e.message().contains("no object"), "{e}");
    let mut r = syscount("v1", objs::SYSCOUNT_V1);
    r.sha256 = "00".repeat(32);
    let e = c.load(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = c
        .activate(pb::ActivateRequest {
            program: "x".into(),
            revision: "y".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = c
        .update_config(pb::UpdateConfigRequest {
            program: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    // An object above the agent's limit: a clear refusal.
    let mut r = syscount("v1", objs::SYSCOUNT_V1);
    r.source = Some(pb::load_request::Source::Object(vec![0; 20 << 20]));
    let e = c.load(r).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("at most 16777216 accepted"), "{e}");
    // A message above the transport limit is refused before it reaches the
    // agent; the agent stays up.
    let mut r = syscount("v1", objs::SYSCOUNT_V1);
    r.source = Some(pb::load_request::Source::Object(vec![0; 40 << 20]));
    assert!(c.load(r).await.is_err());
    let mut c = agent.client().await;
    // Still alive and serving.
    let info = c
        .node_info(pb::NodeInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(info.btf_present && info.bpffs_mounted);
    let kprobe = info
        .hooks
        .iter()
        .find(|h| h.hook == HookKind::Kprobe as i32)
        .unwrap();
    assert!(!kprobe.supported && !kprobe.reason.is_empty());
    // After setup the agent holds only what loading and switching need.
    assert!(
        info.missing_capabilities
            .iter()
            .any(|c| c == "CAP_SYS_ADMIN"),
        "{info:?}"
    );
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"] {
        assert!(info.capabilities.iter().any(|c| c == cap), "{info:?}");
    }

    // Metrics carry kernel figures per program and revision.
    c.load(syscount("v1", objs::SYSCOUNT_V1)).await.unwrap();
    c.activate(pb::ActivateRequest {
        program: "syscount".into(),
        revision: "v1".into(),
    })
    .await
    .unwrap();
    getppid_n(10);
    let m = scrape(port).await;
    assert!(
        m.contains("bpfleet_program_runs_total{program=\"syscount\",revision=\"v1\"}"),
        "{m}"
    );
    assert!(
        m.contains("bpfleet_map_memory_bytes{program=\"syscount\",revision=\"v1\"}"),
        "{m}"
    );
    assert!(
        m.contains("bpfleet_agent_operations_total{op=\"activate\",result=\"ok\"}"),
        "{m}"
    );
    assert!(
        m.contains("bpfleet_agent_operations_total{op=\"load\",result=\"denied\"}"),
        "{m}"
    );
    c.unload(pb::UnloadRequest {
        program: "syscount".into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    assert!(root.pins().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcx_switch_under_traffic_keeps_one_link() {
    let root = PinRoot::new("tcx");
    let ns = Netns::with_veth("tcx");
    let tcpkts = root.path.join("tccount/_map_tcpkts");
    let agent = AgentProc::start(&root, Some(&ns), &["--allow-unsigned"]);
    let mut c = agent.client().await;
    let tc = |rev: &str, obj: &[u8]| {
        load_req(
            "tccount",
            rev,
            obj,
            vec![entry("tc_count", HookKind::TcxIngress, "veth1")],
            &["tcpkts"],
        )
    };
    c.load(tc("v1", objs::TCCOUNT_V1)).await.unwrap();
    c.load(tc("v2", objs::TCCOUNT_V2)).await.unwrap();
    c.activate(pb::ActivateRequest {
        program: "tccount".into(),
        revision: "v1".into(),
    })
    .await
    .unwrap();
    ns.send_frames(400);
    assert_eq!(slots(&tcpkts), [400, 0, 0, 400]);
    let link_before = link_of(&mut c, "tccount").await;

    let path = ns.path();
    let sender = std::thread::spawn(move || send_frames_in(&path, 10_000));
    tokio::time::sleep(Duration::from_millis(40)).await;
    c.activate(pb::ActivateRequest {
        program: "tccount".into(),
        revision: "v2".into(),
    })
    .await
    .unwrap();
    let sent = sender.join().unwrap();
    let p = slots(&tcpkts);
    assert_eq!(p[0] + p[1], 400 + sent, "lost or doubled frames: {p:?}");
    assert!(
        p[0] > 400 && p[1] > 0,
        "switch did not happen under traffic: {p:?}"
    );
    let link_after = link_of(&mut c, "tccount").await;
    assert_eq!(link_before.0, link_after.0);
    assert_ne!(link_before.1, link_after.1);

    c.rollback(pb::RollbackRequest {
        program: "tccount".into(),
        to_revision: "v1".into(),
    })
    .await
    .unwrap();
    let before = slots(&tcpkts);
    ns.send_frames(100);
    assert_eq!(slots(&tcpkts)[0], before[0] + 100);
    // The active revision cannot be unloaded alone; the inactive one can.
    let e = c
        .unload(pb::UnloadRequest {
            program: "tccount".into(),
            revision: "v1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    c.unload(pb::UnloadRequest {
        program: "tccount".into(),
        revision: "v2".into(),
    })
    .await
    .unwrap();
    c.unload(pb::UnloadRequest {
        program: "tccount".into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    assert!(root.pins().is_empty(), "{:?}", root.pins());
}
