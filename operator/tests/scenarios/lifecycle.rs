//! Immediate rollouts and what every strategy shares: the progress deadline,
//! idempotence, restarts, node churn, load failures, undo and history.

use super::*;
use crate::common::*;
use bpfleet_api::program::{Phase, RevisionOutcome, RevisionState, VerifyFirst};
use bpfleet_operator::rollout::selection::{canary_count, canary_nodes};
use bpfleet_operator::rollout::{ActionKind, CommandKind};

#[test]
fn immediate_first_revision_becomes_stable_then_v2_replaces_it() {
    let mut f = Fleet::new(3, spec("v1", immediate()));
    let out = f.tick(0);
    assert_eq!(out.actions.len(), 6, "load and activate on 3 nodes");
    assert_eq!(phase(&f), Phase::Progressing);
    assert_eq!(f.status.stable_revision, None);
    f.tick(1);
    let v1 = f.revision();
    assert_eq!(phase(&f), Phase::Healthy);
    assert_eq!(f.status.stable_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(f.status.candidate_revision, None);
    assert_eq!(f.status.node_summary.as_deref(), Some("3/3"));
    assert_eq!(f.status.current_step.as_deref(), Some("1/1"));
    assert_eq!(f.status.current_node_percent, Some(100));
    assert_eq!(f.condition("Ready"), "True");
    assert_eq!(f.condition("Reconciling"), "False");
    assert_eq!(f.status.observed_generation, Some(1));
    assert_eq!(f.status.history[0].state, RevisionState::Active);
    assert_eq!(f.status.history[0].outcome, Some(RevisionOutcome::Promoted));
    assert_eq!(
        f.status.history[0].source_commit.as_deref(),
        Some("0123abc")
    );
    assert_eq!(f.event_count("RolloutCompleted"), 1);

    f.apply(spec("v2", immediate()));
    let v2 = f.revision();
    f.settle(1, 10);
    assert_eq!(phase(&f), Phase::Healthy);
    assert_eq!(f.running(&v2), 3);
    assert_eq!(f.loaded(&v1), 0, "previous revision unloaded");
    assert_eq!(f.status.history[1].revision, v1);
    assert_eq!(f.status.history[1].state, RevisionState::Inactive);
    assert_eq!(f.status.observed_generation, Some(2));
}

#[test]
fn progress_deadline_excludes_paused_time() {
    let (mut f, v1) = stable_fleet(4);
    let base = spec("v2", canary(1, vec![percent(50), percent(100)]));
    f.apply(base.clone());
    for node in f.nodes.values_mut() {
        node.stuck = true;
    }
    f.tick(0);
    f.tick(400);
    assert_eq!(phase(&f), Phase::Progressing);
    let mut paused = base.clone();
    paused.paused = true;
    f.apply(paused);
    f.tick(0);
    assert_eq!(phase(&f), Phase::Paused);
    f.tick(500);
    assert_eq!(phase(&f), Phase::Paused);
    f.apply(base);
    f.tick(0);
    f.tick(100);
    assert_eq!(
        phase(&f),
        Phase::Progressing,
        "400 + 100 s of progress time"
    );
    f.tick(101);
    assert_eq!(phase(&f), Phase::Aborted);
    assert_eq!(f.condition("Stalled"), "True");
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("progressDeadlineSeconds 600")
    );
    assert_eq!(f.event_count("ProgressDeadlineExceeded"), 1);
    assert_eq!(f.event_count("RolloutPaused"), 1);
    assert_eq!(f.event_count("RolloutResumed"), 1);
    assert_eq!(f.running(&v1), 4);
}

#[test]
fn same_input_gives_same_output_and_quiet_repeats() {
    let (mut f, _) = stable_fleet(6);
    f.apply(spec(
        "v2",
        canary(2, vec![percent(50), pause(None), percent(100)]),
    ));
    f.tick(1);
    let status = f.status.clone();
    let a = f.decide(&status);
    let b = f.decide(&status);
    assert_eq!(a, b);
    f.settle(1, 10);
    assert_eq!(phase(&f), Phase::Paused);
    let before = f.events.len();
    for _ in 0..10 {
        f.tick(30);
    }
    assert_eq!(
        f.events.len(),
        before,
        "no event spam while nothing changes"
    );
}

#[test]
fn restart_from_status_alone_continues_identically() {
    let steps = vec![
        percent(25),
        pause(Some("30s")),
        analysis(30, 10),
        percent(75),
        pause(Some("20s")),
    ];
    let mut plain = stable_fleet(8).0;
    let mut restarted = stable_fleet(8).0;
    restarted.restart_every_call = true;
    for f in [&mut plain, &mut restarted] {
        f.apply(spec("v2", canary(1, steps.clone())));
    }
    for i in 0..40 {
        let a = plain.tick(7);
        let b = restarted.tick(7);
        assert_eq!(a, b, "diverged at tick {i}");
    }
    assert_eq!(plain.status.stable_revision, Some(plain.revision()));
}

#[test]
fn nodes_joining_get_their_place_and_leaving_get_unloaded() {
    let (mut f, v1) = stable_fleet(4);
    f.apply(spec(
        "v2",
        canary(1, vec![percent(50), pause(None), percent(100)]),
    ));
    let v2 = f.revision();
    f.settle(1, 10);
    assert_eq!(f.running(&v2), 2);
    f.join("node-10");
    f.settle(1, 10);
    let names: Vec<String> = f.nodes.keys().cloned().collect();
    let set = canary_nodes(PROGRAM, names.iter().map(String::as_str), 50);
    assert_eq!(f.running(&v2), canary_count(50, 5));
    let joined_on = f.nodes["node-10"].active.clone();
    let expected = if set.contains(&"node-10") { &v2 } else { &v1 };
    assert_eq!(joined_on.as_deref(), Some(expected.as_str()));

    let leaving = set[0].to_string();
    f.leave(&leaving);
    let out = f.tick(1);
    let theirs: Vec<_> = out.actions.iter().filter(|a| a.node == leaving).collect();
    assert!(!theirs.is_empty() && theirs.iter().all(|a| a.kind == ActionKind::Unload));
    assert!(f.departed[&leaving].loaded.is_empty());
    assert_eq!(f.status.nodes.desired, 4);
}

#[test]
fn verifier_rejection_aborts_with_reason() {
    let (mut f, v1) = stable_fleet(3);
    f.apply(spec("v2", immediate()));
    let v2 = f.revision();
    f.broken.insert(v2, "VerifierRejected".into());
    f.tick(1);
    f.tick(1);
    assert_eq!(phase(&f), Phase::Aborted);
    let message = f.status.message.clone().unwrap_or_default();
    assert!(
        message.contains("VerifierRejected") && message.contains("3 node(s)"),
        "{message}"
    );
    assert_eq!(f.condition("Stalled"), "True");
    assert_eq!(f.running(&v1), 3);
}

#[test]
fn undo_to_a_registry_revision_without_touching_spec() {
    let (mut f, v1) = stable_fleet(3);
    f.apply(spec("v2", immediate()));
    let v2 = f.revision();
    f.settle(1, 5);
    assert_eq!(f.status.stable_revision.as_deref(), Some(v2.as_str()));
    f.command(CommandKind::Undo {
        revision: v1.clone(),
    });
    f.settle(1, 5);
    assert_eq!(f.running(&v1), 3);
    assert_eq!(f.status.stable_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(phase(&f), Phase::Healthy);
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("held until the spec changes")
    );
    f.command(CommandKind::Undo {
        revision: "0000000000".into(),
    });
    f.tick(1);
    assert_eq!(f.event_count("UndoRejected"), 1);
    f.apply(spec("v3", immediate()));
    f.settle(1, 5);
    assert_eq!(f.running(&f.revision()), 3);
}

#[test]
fn history_is_trimmed_but_keeps_active_revisions() {
    let mut f = Fleet::new(2, spec("v0", immediate()));
    f.spec.revision_history_limit = 3;
    f.settle(1, 5);
    for v in 1..5 {
        let mut s = spec(&format!("v{v}"), immediate());
        s.revision_history_limit = 3;
        f.apply(s);
        f.settle(1, 5);
    }
    let versions: Vec<&str> = f
        .status
        .history
        .iter()
        .map(|r| r.version.as_str())
        .collect();
    assert_eq!(versions, ["v4", "v3", "v2"]);
    assert_eq!(f.status.history[0].state, RevisionState::Active);
    assert!(
        f.status.history[1..]
            .iter()
            .all(|r| r.state == RevisionState::Inactive)
    );
}

#[test]
fn a_load_failure_held_by_pause_policy_can_be_retried() {
    let (mut f, v1) = stable_fleet(3);
    let mut s = spec("v2", canary(3, vec![percent(100)]));
    s.failure_policy = bpfleet_api::program::FailurePolicy::Pause;
    f.apply(s);
    let v2 = f.revision();
    f.broken.insert(v2.clone(), "VerifierRejected".into());
    f.tick(1);
    f.tick(1);
    assert_eq!(phase(&f), Phase::Aborted);
    assert_eq!(f.status.nodes.failed, 3);
    assert_eq!(f.status.failing_nodes[0].reason, "VerifierRejected");
    assert_eq!(f.running(&v1), 3);
    // Quiet while held: failed loads are not resent on every reconcile.
    assert!(f.tick(60).actions.is_empty());
    f.broken.clear();
    f.command(CommandKind::Retry);
    let out = f.tick(1);
    assert_eq!(
        out.actions
            .iter()
            .filter(|a| a.kind == ActionKind::Load)
            .count(),
        3
    );
    f.settle(1, 5);
    assert_eq!(f.status.stable_revision.as_deref(), Some(v2.as_str()));
    assert_eq!(f.running(&v2), 3);
}

#[test]
fn an_unreachable_agent_is_reported_and_the_deadline_decides() {
    let (mut f, v1) = stable_fleet(4);
    let mut s = spec("v2", canary(4, vec![percent(100)]));
    s.progress_deadline_seconds = 120;
    // Verification would hold every node until node-02 answers (see
    // `verify::an_unreachable_node_holds_verification_until_the_deadline`).
    s.strategy.verify_first = Some(VerifyFirst {
        enabled: Some(false),
        ..Default::default()
    });
    f.apply(s);
    let v2 = f.revision();
    f.nodes.get_mut("node-02").expect("node").reachable = false;
    let out = f.tick(1);
    assert!(
        out.actions.iter().all(|a| a.node != "node-02"),
        "nothing sent to it"
    );
    f.tick(1);
    assert_eq!(phase(&f), Phase::Progressing);
    assert_eq!(f.running(&v2), 3);
    assert_eq!(f.status.nodes.failed, 1);
    assert_eq!(f.status.failing_nodes[0].node, "node-02");
    assert_eq!(f.status.failing_nodes[0].reason, "AgentUnreachable");
    assert_eq!(f.condition("Degraded"), "True");
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("3 of 4 nodes")
    );
    f.tick(60);
    assert_eq!(phase(&f), Phase::Progressing);
    f.tick(61);
    assert_eq!(phase(&f), Phase::Aborted);
    let message = f.status.message.clone().unwrap_or_default();
    assert!(message.contains("waiting for node-02"), "{message}");
    assert_eq!(f.running(&v1), 4, "back on stable (node-02 never left it)");
    assert_eq!(f.loaded(&v2), 0);
}

#[test]
fn a_node_that_cannot_run_stable_makes_the_program_degraded() {
    let (mut f, v1) = stable_fleet(3);
    assert_eq!(f.condition("Ready"), "True");
    f.broken.insert(v1.clone(), "AttachFailed".into());
    f.join("node-old-kernel");
    f.tick(1);
    f.tick(1);
    assert_eq!(phase(&f), Phase::Degraded);
    assert_eq!(f.condition("Degraded"), "True");
    assert_eq!(f.condition("Ready"), "False");
    assert_eq!(f.status.nodes.failed, 1);
    assert_eq!(f.status.failing_nodes[0].node, "node-old-kernel");
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("1 of 4 nodes fail")
    );
    // Not resent on every reconcile, and quiet.
    let out = f.tick(30);
    assert!(out.actions.is_empty() && out.events.is_empty());
    f.leave("node-old-kernel");
    f.settle(1, 3);
    assert_eq!(phase(&f), Phase::Healthy);
}
