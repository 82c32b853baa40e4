//! Programs no TracerProgram wants, found and unloaded by the operator's
//! sweep; a wanted one never touched.

use std::time::{Duration, Instant};

use bpfleet_api::TracerProgram;
use bpfleet_api::program::Phase;
use bpfleet_e2e::ControlPlane;
use bpfleet_operator::agents::Pool;
use bpfleet_proto::v1 as pb;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;

use super::cluster::*;
use super::nodes::*;

/// A program loaded straight on an agent (as one deleted while its agent
/// was down would be left): reported on the Node, then unloaded after the
/// grace period, with both events; the program a TracerProgram wants stays
/// loaded through every sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_program_no_tracerprogram_wants_is_unloaded_after_the_grace_period() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    let client = cp.client().await.expect("client");
    let objects = Objects::write();
    let agent = Agent::start("node-orphans");
    agent.register(&client).await;
    let api: Api<TracerProgram> = Api::all(client.clone());
    let operator = Operator::start_with(
        &client,
        "operator",
        &["--orphan-grace-seconds", "4", "--orphan-sweep-seconds", "1"],
    );
    apply(&api, &objects.spec("v1", "1.0.0", json!({"immediate": {}}))).await;
    wait_for(&api, "healthy", 60, |tp| phase(tp) == Some(Phase::Healthy)).await;
    // The program's map memory, as the agent's kernel figures say.
    let tp = wait_for(&api, "map memory in status", 30, |tp| {
        tp.status.as_ref().is_some_and(|s| s.map_memory.is_some())
    })
    .await;
    let m = tp.status.and_then(|s| s.map_memory).expect("mapMemory");
    assert_eq!((m.nodes, m.max_node.as_str()), (1, "node-orphans"));
    assert!(
        m.total_bytes > 0 && m.total_bytes == m.max_node_bytes,
        "{m:?}"
    );

    let pool = Pool::new(None, Duration::from_secs(10));
    let mut c = pool.client(&agent.endpoint()).expect("client");
    let (path, sha) = objects.paths["v2"].clone();
    c.load(pb::LoadRequest {
        program: "stray".into(),
        revision: "r1".into(),
        source: Some(pb::load_request::Source::ObjectPath(path)),
        sha256: sha,
        entries: vec![pb::ProgramEntry {
            bpf_program: "count_getppid".into(),
            hook: pb::HookKind::Tracepoint as i32,
            target: "syscalls/sys_enter_getppid".into(),
            pid: 0,
        }],
        ..Default::default()
    })
    .await
    .expect("stray load");
    let held = |c: &mut pb::agent_client::AgentClient<tonic::transport::Channel>| {
        let mut c = c.clone();
        async move {
            let l = c
                .list(pb::ListRequest {
                    program: String::new(),
                })
                .await
                .expect("list")
                .into_inner();
            let mut names: Vec<String> = l.programs.into_iter().map(|p| p.program).collect();
            names.sort();
            names
        }
    };
    assert_eq!(held(&mut c).await, ["stray", PROGRAM]);
    let loaded_at = Instant::now();
    let deadline = loaded_at + Duration::from_secs(30);
    while held(&mut c).await != [PROGRAM] {
        assert!(Instant::now() < deadline, "stray never unloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        loaded_at.elapsed() >= Duration::from_secs(4),
        "unloaded before the grace period: {:?}",
        loaded_at.elapsed()
    );
    assert!(
        !agent
            .pins()
            .iter()
            .any(|p| p.to_string_lossy().contains("stray")),
        "{:?}",
        agent.pins()
    );
    let events: Api<Event> = Api::all(client.clone());
    let reasons: Vec<(String, String)> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("node-orphans"))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect();
    for want in ["OrphanFound", "OrphanUnloaded"] {
        assert!(
            reasons
                .iter()
                .any(|(r, n)| r == want && n.contains("stray")),
            "no {want} event on the Node: {reasons:?}"
        );
    }
    // The wanted program was never touched: its revision loaded once,
    // still active.
    let tp = api.get(PROGRAM).await.expect("get");
    assert_eq!(phase(&tp), Some(Phase::Healthy));
    let unloads = agent
        .audited_actions()
        .iter()
        .filter(|a| *a == "unload")
        .count();
    assert_eq!(unloads, 1, "only the stray was unloaded");

    delete_and_wait(&api, PROGRAM).await;
    assert!(agent.pins().is_empty(), "pins left: {:?}", agent.pins());
    operator.kill();
}
