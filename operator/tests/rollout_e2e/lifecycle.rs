//! The life of one program through every kind of rollout (see the crate
//! comment of `rollout_e2e.rs` for the walk), on three real agents.

use std::time::{Duration, Instant};

use bpfleet_api::TracerProgram;
use bpfleet_api::program::{Phase, RevisionState};
use bpfleet_e2e::ControlPlane;
use bpfleet_operator::agents::Pool;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::cluster::*;
use super::nodes::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_program_lives_through_every_kind_of_rollout() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "bpfleet_operator=info".into()),
        ))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    let client = cp.client().await.expect("client");
    let objects = Objects::write();
    let mut agents: Vec<Agent> = NODES.iter().map(|n| Agent::start(n)).collect();
    let _load = Load::start();
    let pool = Pool::new(None, Duration::from_secs(30));

    for a in &agents {
        a.register(&client).await;
    }
    let policies = create_policy(
        &client,
        json!({
            "targets": {"programNames": [PROGRAM]},
            "health": {"maxProgramFailures": 0, "minSamples": 1, "consecutiveFailureLimit": 1}
        }),
    )
    .await;

    let api: Api<TracerProgram> = Api::all(client.clone());
    let mut operator = Operator::start(client.clone());

    // 1. v1, immediate: every node runs it and counts into slot 0.
    let v1 = objects.spec("v1", "1.0.0", json!({"immediate": {}}));
    let r1 = spec_revision(&v1);
    apply(&api, &v1).await;
    let tp = wait_for(&api, "v1 healthy", 60, |tp| healthy_on(tp, &r1)).await;
    assert!(tp.finalizers().iter().any(|f| f == "bpfleet.dev/unload"));
    settle(&pool, &agents, "v1 everywhere", |p| {
        p.iter().all(|(a, _)| *a == r1)
    })
    .await;
    counting(&agents, 0, &[1, 2]).await;
    // The policy (empty config, still a policy) was written between each
    // node's first Load and its Activate: no revision ran unconfigured.
    for a in &agents {
        let actions = a.audited_actions();
        let first = |what: &str| actions.iter().position(|x| x == what);
        let (load, config, activate) = (first("load"), first("update_config"), first("activate"));
        assert!(
            load < config && config < activate && load.is_some(),
            "{}: audit order {actions:?}",
            a.node
        );
    }

    // 1b. The policy's runtime configuration reaches every node's kernel
    //     maps, with no reload, and both statuses say where it is in force;
    //     a policy change is written again.
    let ids_before = prog_ids(&pool, &agents).await;
    let config = json!({"samplingRate": 0.5, "payloadBytes": 512, "ends": "Both",
        "exchangeEvents": "All", "filters": {"pids": [4242, 77], "ports": [8080], "excludePorts": [22], "namespaces": ["shop"]},
        "redaction": {"queryParams": ["sid"]}, "routes": {"patterns": ["/items/{item}"]}});
    set_policy_config(&policies, config).await;
    let pol = policy_settled(&policies, "policy in force", |c| c.reason == "Applied").await;
    assert!(pol.message.contains("3/3 nodes"), "{}", pol.message);
    for a in &agents {
        assert_eq!(config_slots(a), [500_000, 512, 1, 3, 3, 1], "{}", a.node);
        assert_eq!(
            map_entries::<4>(a, "bpfleet_pids"),
            [(77u32.to_ne_bytes(), 1), (4242u32.to_ne_bytes(), 1)]
        );
        let mut ports = map_entries::<2>(a, "bpfleet_ports");
        ports.sort_by_key(|(k, _)| u16::from_ne_bytes(*k));
        assert_eq!(
            ports,
            [(22u16.to_ne_bytes(), 2), (8080u16.to_ne_bytes(), 1)],
            "{}",
            a.node
        );
        assert_ne!(config_stamp(a), 0, "{}", a.node);
    }
    let tp = wait_for(&api, "program reports the policy", 30, |tp| {
        tp.status
            .as_ref()
            .and_then(|s| s.policy.as_ref())
            .is_some_and(|p| p.configured_nodes == 3)
    })
    .await;
    let applied = tp
        .status
        .as_ref()
        .and_then(|s| s.policy.clone())
        .expect("policy in status");
    assert_eq!(
        (applied.name.as_str(), applied.nodes, applied.message),
        ("syscount-health", 3, None)
    );
    assert_eq!(
        prog_ids(&pool, &agents).await,
        ids_before,
        "configuration must not reload programs"
    );
    assert_eq!(
        namespace_filters(&pool, &agents).await,
        vec![vec!["shop".to_string()]; 3]
    );
    // The HTTP tracer's rules too, held by every agent for the program (the
    // real tracer applying them is node-agent/tests/http_policy_rules.rs).
    assert_eq!(
        tracer_rules(&pool, &agents).await,
        vec![
            (
                vec!["/items/{item}".to_string()],
                vec!["sid".to_string()],
                false
            );
            3
        ]
    );
    let stamp = config_stamp(&agents[0]);
    set_policy_config(&policies, json!({"filters": {"ports": [9090]}})).await;
    policy_settled(&policies, "changed policy in force", |c| {
        c.reason == "Applied"
    })
    .await;
    for a in &agents {
        assert_eq!(config_slots(a), [0, 0, 0, 1, 0, 0], "{}", a.node);
        assert_eq!(
            map_entries::<2>(a, "bpfleet_ports"),
            [(9090u16.to_ne_bytes(), 1)],
            "{}: replaced, not added",
            a.node
        );
        assert_ne!(config_stamp(a), stamp, "{}", a.node);
    }
    assert_eq!(
        namespace_filters(&pool, &agents).await,
        vec![Vec::<String>::new(); 3],
        "the new policy has no namespace filter: lifted"
    );
    assert_eq!(
        tracer_rules(&pool, &agents).await,
        vec![(Vec::new(), Vec::new(), false); 3],
        "the new policy has no tracer rules: the agents' own are back"
    );
    counting(&agents, 0, &[1, 2]).await;

    // 2. v2 by canary: one node of three first, held by a timed pause, then
    //    all. The counters move from slot 0 to slot 1.
    let v2 = objects.spec(
        "v2",
        "2.0.0",
        json!({"canary": {"steps": [{"setNodePercent": 33}, {"pause": {"duration": "4s"}}, {"setNodePercent": 100}]}}),
    );
    let r2 = spec_revision(&v2);
    apply(&api, &v2).await;
    let tp = wait_for(&api, "v2 on one node, pausing", 60, |tp| {
        tp.status.as_ref().is_some_and(|s| {
            s.nodes.updated == 1 && s.candidate_revision.as_deref() == Some(r2.as_str())
        })
    })
    .await;
    let on_r2 = placement(&pool, &agents)
        .await
        .iter()
        .filter(|(a, _)| *a == r2)
        .count();
    assert_eq!(on_r2, 1, "exactly one node on the candidate: {}", dump(&tp));
    wait_for(&api, "v2 healthy", 60, |tp| healthy_on(tp, &r2)).await;
    counting(&agents, 1, &[0, 2]).await;

    // 3. v3 (v1's object again under another version label is the same
    //    revision, so use the faulty-free v1 bytes with another map set:
    //    here, simply v1 by canary with an untimed pause). Kill the
    //    operator at the pause; the new one resumes at the same step;
    //    promote by annotation.
    let v3 = objects.spec(
        "v1",
        "3.0.0",
        json!({"canary": {"steps": [{"setNodePercent": 33}, {"pause": {}}, {"setNodePercent": 66}, {"pause": {}}]}}),
    );
    apply(&api, &v3).await;
    let paused = wait_for(&api, "v3 paused at step 1", 60, |tp| {
        phase(tp) == Some(Phase::Paused)
            && tp
                .status
                .as_ref()
                .is_some_and(|s| s.nodes.updated == 1 && s.current_step_index == Some(1))
    })
    .await;
    operator.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    operator = Operator::start(client.clone());
    // Give the new operator several reconciles: it must stay where it was.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let resumed = api.get(PROGRAM).await.expect("get");
    let (a, b) = (
        paused.status.clone().unwrap(),
        resumed.status.clone().unwrap(),
    );
    assert_eq!(
        (
            a.phase,
            a.current_step_index,
            a.nodes.updated,
            a.candidate_revision.clone()
        ),
        (
            b.phase,
            b.current_step_index,
            b.nodes.updated,
            b.candidate_revision.clone()
        ),
        "restarted operator moved the rollout:\n{}",
        dump(&resumed)
    );
    let promote = json!({"metadata": {"annotations": {"bpfleet.dev/promote": "e2e-1"}}});
    api.patch(PROGRAM, &PatchParams::default(), &Patch::Merge(&promote))
        .await
        .expect("promote");
    let tp = wait_for(&api, "promote acknowledged, 2 nodes", 60, |tp| {
        tp.status.as_ref().is_some_and(|s| {
            s.nodes.updated == 2
                && s.rollout
                    .as_ref()
                    .is_some_and(|r| r.acknowledged_requests.iter().any(|x| x == "promote/e2e-1"))
        })
    })
    .await;
    assert_eq!(phase(&tp), Some(Phase::Paused), "{}", dump(&tp));
    let promote = json!({"metadata": {"annotations": {"bpfleet.dev/promote": "e2e-2"}}});
    api.patch(PROGRAM, &PatchParams::default(), &Patch::Merge(&promote))
        .await
        .expect("promote");
    // v3 has v1's content: same revision id, so the registry shows r1
    // coming back rather than a new entry.
    wait_for(&api, "v3 (= r1) healthy", 60, |tp| healthy_on(tp, &r1)).await;
    counting(&agents, 0, &[1, 2]).await;

    // 4. A revision the verifier rejects: the canary node fails to load it;
    //    the rollout aborts, every node stays on / returns to stable, the
    //    reason is in status, and nothing of the bad revision is left.
    let bad = objects.spec(
        "bad",
        "4.0.0-bad",
        json!({"canary": {"steps": [{"setNodePercent": 33}, {"pause": {}}]}}),
    );
    let rbad = spec_revision(&bad);
    apply(&api, &bad).await;
    let tp = wait_for(&api, "bad revision aborted", 60, |tp| {
        phase(tp) == Some(Phase::Aborted)
    })
    .await;
    let st = tp.status.clone().unwrap();
    assert_eq!(st.stable_revision.as_deref(), Some(r1.as_str()));
    let text = dump(&tp);
    assert!(
        text.contains("VerifierRejected"),
        "reason in status:\n{text}"
    );
    let rec = st
        .history
        .iter()
        .find(|h| h.revision == rbad)
        .expect("bad revision in registry");
    assert_ne!(rec.state, RevisionState::Active);
    settle(&pool, &agents, "bad revision gone", |p| {
        p.iter().all(|(a, l)| *a == r1 && !l.contains(&rbad))
    })
    .await;
    counting(&agents, 0, &[1, 2]).await;
    // Re-applying the same bad spec does nothing: it stays aborted.
    apply(&api, &bad).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        phase(&api.get(PROGRAM).await.unwrap()),
        Some(Phase::Aborted)
    );

    // 5. An unhealthy revision: it loads, but reports program errors on
    //    every event; the analysis gate fails on the measured figures and
    //    the canary node is rolled back.
    let faulty = objects.spec(
        "faulty",
        "5.0.0",
        json!({"canary": {"steps": [
            {"setNodePercent": 33},
            {"analysis": {"durationSeconds": 12, "intervalSeconds": 3}},
            {"setNodePercent": 100}
        ]}}),
    );
    let rfaulty = spec_revision(&faulty);
    apply(&api, &faulty).await;
    let tp = wait_for(&api, "unhealthy revision rolled back", 90, |tp| {
        phase(tp) == Some(Phase::Aborted)
            && tp
                .status
                .as_ref()
                .is_some_and(|s| s.candidate_revision.as_deref() != Some(rbad.as_str()))
            && tp
                .status
                .as_ref()
                .and_then(|s| s.last_analysis.as_ref())
                .is_some_and(|a| a.revision == rfaulty)
    })
    .await;
    let analysis = tp
        .status
        .as_ref()
        .and_then(|s| s.last_analysis.clone())
        .unwrap();
    let gate = analysis
        .gates
        .iter()
        .find(|g| g.gate == "programFailures")
        .unwrap_or_else(|| panic!("no programFailures gate: {}", dump(&tp)));
    assert!(!gate.passed, "{}", dump(&tp));
    assert!(
        gate.measured.ends_with("failures") && !gate.measured.starts_with("0 "),
        "{}",
        dump(&tp)
    );
    settle(
        &pool,
        &agents,
        "unhealthy revision rolled back and unloaded",
        |p| p.iter().all(|(a, l)| *a == r1 && !l.contains(&rfaulty)),
    )
    .await;
    counting(&agents, 0, &[1, 2]).await;

    // 5b. A costly revision: it counts and reports no error, but spends
    //     several times stable's BPF run time per run. With a run-time
    //     gate in the policy, the analysis fails on the kernel's own
    //     run_time_ns / run_cnt and the canary node is rolled back.
    set_policy_health(
        &policies,
        json!({"maxRunTimeRatio": 2.0, "minSamples": 1000}),
    )
    .await;
    let costly = objects.spec(
        "costly",
        "5.1.0",
        json!({"canary": {"steps": [
            {"setNodePercent": 33},
            {"analysis": {"durationSeconds": 12, "intervalSeconds": 3}},
            {"setNodePercent": 100}
        ]}}),
    );
    let rcostly = spec_revision(&costly);
    apply(&api, &costly).await;
    let tp = wait_for(&api, "costly revision rolled back", 90, |tp| {
        phase(tp) == Some(Phase::Aborted)
            && tp
                .status
                .as_ref()
                .and_then(|s| s.last_analysis.as_ref())
                .is_some_and(|a| a.revision == rcostly)
    })
    .await;
    let analysis = tp
        .status
        .as_ref()
        .and_then(|s| s.last_analysis.clone())
        .unwrap();
    let gate = analysis
        .gates
        .iter()
        .find(|g| g.gate == "runTimePerRun")
        .unwrap_or_else(|| panic!("no runTimePerRun gate: {}", dump(&tp)));
    eprintln!("costly revision: {} ({})", gate.measured, gate.threshold);
    assert!(!gate.passed, "{}", dump(&tp));
    assert!(
        gate.measured.contains("ns per run") && gate.threshold.starts_with("<= 2.00 x "),
        "{}",
        dump(&tp)
    );
    let program_failures = analysis
        .gates
        .iter()
        .find(|g| g.gate == "programFailures")
        .expect("programFailures gate");
    assert!(
        program_failures.passed,
        "the cost alone failed it: {}",
        dump(&tp)
    );
    settle(
        &pool,
        &agents,
        "costly revision rolled back and unloaded",
        |p| p.iter().all(|(a, l)| *a == r1 && !l.contains(&rcostly)),
    )
    .await;
    counting(&agents, 0, &[1, 2]).await;
    // 5c. A lossy revision: it counts, reports no error and costs what
    //     stable costs, but drops events (BPFLEET_LOST, a full ring buffer
    //     in a real program): the maxEventsLost gate fails on the canary
    //     node's own counter and the node is rolled back.
    set_policy_health(
        &policies,
        json!({"maxRunTimeRatio": null, "minSamples": 1, "maxEventsLost": 0}),
    )
    .await;
    let lossy = objects.spec(
        "lossy",
        "5.2.0",
        json!({"canary": {"steps": [
            {"setNodePercent": 33},
            {"analysis": {"durationSeconds": 12, "intervalSeconds": 3}},
            {"setNodePercent": 100}
        ]}}),
    );
    let rlossy = spec_revision(&lossy);
    apply(&api, &lossy).await;
    let tp = wait_for(&api, "lossy revision rolled back", 90, |tp| {
        phase(tp) == Some(Phase::Aborted)
            && tp
                .status
                .as_ref()
                .and_then(|s| s.last_analysis.as_ref())
                .is_some_and(|a| a.revision == rlossy)
    })
    .await;
    let analysis = tp
        .status
        .as_ref()
        .and_then(|s| s.last_analysis.clone())
        .unwrap();
    let gate = analysis
        .gates
        .iter()
        .find(|g| g.gate == "eventsLost")
        .unwrap_or_else(|| panic!("no eventsLost gate: {}", dump(&tp)));
    eprintln!("lossy revision: {} ({})", gate.measured, gate.threshold);
    assert!(
        !gate.passed && gate.measured.ends_with(" events") && !gate.measured.starts_with("0 "),
        "{}",
        dump(&tp)
    );
    settle(
        &pool,
        &agents,
        "lossy revision rolled back and unloaded",
        |p| p.iter().all(|(a, l)| *a == r1 && !l.contains(&rlossy)),
    )
    .await;
    counting(&agents, 0, &[1, 2]).await;
    set_policy_health(&policies, json!({"maxEventsLost": null})).await;

    // 6. An agent dies mid-rollout: the node is reported, the rollout waits;
    //    back up, it finishes. v2 by canary one node at a time.
    let v2b = objects.spec(
        "v2",
        "2.0.1",
        json!({"canary": {"steps": [{"setNodePercent": 100}], "maxUnavailable": 1}}),
    );
    agents[2].kill9();
    apply(&api, &v2b).await;
    let tp = wait_for(&api, "dead agent reported", 60, |tp| {
        tp.status.as_ref().is_some_and(|s| {
            s.failing_nodes
                .iter()
                .any(|f| f.node == "node-c" && f.reason == "AgentUnreachable")
        })
    })
    .await;
    assert_ne!(phase(&tp), Some(Phase::Healthy));
    agents[2].spawn();
    wait_for(&api, "v2 healthy after the agent came back", 90, |tp| {
        healthy_on(tp, &r2)
    })
    .await;

    // 7. Blue-green back to v1's bytes with a version bump: candidate loaded
    //    inactive everywhere, promoted automatically, previous kept.
    let bg = objects.spec(
        "v1",
        "6.0.0",
        json!({"blueGreen": {"autoPromotionEnabled": true, "autoPromotionSeconds": 2, "keepPreviousSeconds": 3}}),
    );
    apply(&api, &bg).await;
    wait_for(&api, "blue-green promoted", 60, |tp| healthy_on(tp, &r1)).await;
    counting(&agents, 0, &[1, 2]).await;
    // After keepPreviousSeconds the previous revision is unloaded.
    settle(&pool, &agents, "previous revision unloaded", |p| {
        p.iter().all(|(a, l)| *a == r1 && *l == vec![r1.clone()])
    })
    .await;

    // 8. Undo to r2 from the registry, without touching the spec.
    let undo = json!({"metadata": {"annotations": {"bpfleet.dev/undo": format!("{r2}@e2e")}}});
    api.patch(PROGRAM, &PatchParams::default(), &Patch::Merge(&undo))
        .await
        .expect("undo");
    wait_for(&api, "undo to r2", 60, |tp| {
        stable(tp) == r2 && tp.status.as_ref().is_some_and(|s| s.nodes.ready == 3)
    })
    .await;
    settle(&pool, &agents, "undo on every node", |p| {
        p.iter().all(|(a, _)| *a == r2)
    })
    .await;
    counting(&agents, 1, &[0, 2]).await;

    // 9. Delete: the finalizer unloads every revision from every node and
    //    removes every pin before the object goes.
    api.delete(PROGRAM, &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt(PROGRAM).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "object not finalized");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for a in &agents {
        assert!(
            a.pins().is_empty(),
            "{} still has pins: {:?}",
            a.node,
            a.pins()
        );
    }
    for (active, loaded) in placement(&pool, &agents).await {
        assert!(active.is_empty() && loaded.is_empty());
    }
    operator.kill();
    drop(agents);
    drop(cp);
}
