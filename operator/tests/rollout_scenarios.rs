//! Whole rollouts driven step by step on a simulated fleet with a fake clock:
//! every tick runs the state machine, checks it is a fixed point (same input
//! again: same status, same actions, no events) and lets the simulated
//! agents carry out the actions.
// Test code: helpers outside #[test] fns panic on purpose, the panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bpfleet_api::policy::NoDataPolicy;
use bpfleet_api::program::{
    AnalysisVerdict, BlueGreenStrategy, FailurePolicy, Phase, RevisionOutcome, RevisionState,
};
use bpfleet_operator::rollout::selection::{canary_count, canary_nodes};
use bpfleet_operator::rollout::{ActionKind, CommandKind};
use common::*;

/// A fleet of `n` nodes running `v1` as the stable revision.
fn stable_fleet(n: usize) -> (Fleet, String) {
    let mut f = Fleet::new(n, spec("v1", immediate()));
    f.settle(1, 10);
    assert_eq!(f.status.phase, Some(Phase::Healthy));
    let v1 = f.revision();
    assert_eq!(f.running(&v1), n);
    (f, v1)
}

fn phase(f: &Fleet) -> Phase {
    f.status.phase.expect("phase set")
}

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
fn canary_to_100_with_pauses_and_analysis() {
    let (mut f, v1) = stable_fleet(10);
    f.apply(spec(
        "v2",
        canary(
            1,
            vec![
                percent(20),
                pause(Some("1m")),
                percent(50),
                analysis(30, 10),
                pause(None),
                percent(100),
            ],
        ),
    ));
    let v2 = f.revision();
    let mut seen_step = Vec::new();
    let mut guard = 0;
    while f.status.current_step.as_deref() != Some("4/6") {
        f.tick(10);
        let allowed = match f.status.current_step_index {
            Some(0 | 1) => 2,
            Some(2..=4) => 5,
            _ => 10,
        };
        assert!(
            f.running(&v2) <= allowed,
            "{} nodes on v2 at {:?}",
            f.running(&v2),
            f.status.current_step
        );
        seen_step.push(f.status.current_step.clone().unwrap_or_default());
        guard += 1;
        assert!(
            guard < 50,
            "stuck at {:?}: {:?}",
            f.status.current_step,
            f.status.message
        );
    }
    assert!(
        seen_step.iter().any(|s| s == "1/6"),
        "the timed pause was visible"
    );
    assert_eq!(f.running(&v2), 5);
    assert_eq!(f.running(&v1), 5);
    let analysis = f.status.last_analysis.clone().expect("analysis ran");
    assert_eq!(analysis.verdict, AnalysisVerdict::Passed);
    assert!(
        analysis
            .gates
            .iter()
            .any(|g| g.gate == "errorRate" && g.passed)
    );
    // The indefinite pause holds until promoted.
    for _ in 0..5 {
        let out = f.tick(3600);
        assert!(out.events.is_empty() && out.actions.is_empty());
    }
    assert_eq!(phase(&f), Phase::Paused);
    assert_eq!(f.condition("Paused"), "True");
    assert_eq!(f.status.current_node_percent, Some(50));
    f.command(CommandKind::Promote);
    f.settle(1, 20);
    f.settle(1, 5);
    assert_eq!(phase(&f), Phase::Healthy, "{:?}", f.status.message);
    assert_eq!(f.status.stable_revision.as_deref(), Some(v2.as_str()));
    assert_eq!(f.status.current_step.as_deref(), Some("6/6"));
    assert_eq!(f.running(&v2), 10);
    assert_eq!(f.loaded(&v1), 0);
    assert_eq!(f.event_count("RolloutStarted"), 2);
    assert_eq!(f.event_count("PromoteRequested"), 1);
    assert_eq!(f.event_count("AnalysisPassed"), 1);
}

/// v1 stable on 10 nodes, v2 canary at 30 % with an analysis; v2 serves 5 %
/// errors where v1 serves 1 %.
fn failing_canary(policy: FailurePolicy) -> (Fleet, String, String) {
    let (mut f, v1) = stable_fleet(10);
    let mut s = spec(
        "v2",
        canary(3, vec![percent(30), analysis(30, 10), percent(100)]),
    );
    s.failure_policy = policy;
    f.apply(s);
    let v2 = f.revision();
    f.health.insert(v2.clone(), traffic(1000, 50, 20.0));
    f.gates.consecutive_failure_limit = 2;
    f.settle(1, 5);
    assert_eq!(f.running(&v2), 3);
    assert_eq!(f.status.current_step.as_deref(), Some("1/3"));
    f.tick(10);
    assert_eq!(
        f.status.last_analysis.as_ref().map(|a| a.verdict),
        Some(AnalysisVerdict::Running)
    );
    assert_eq!(phase(&f), Phase::Progressing);
    (f, v1, v2)
}

#[test]
fn canary_aborted_by_error_rate_gate_returns_every_node_to_stable() {
    let (mut f, v1, v2) = failing_canary(FailurePolicy::Rollback);
    let out = f.tick(10);
    assert_eq!(phase(&f), Phase::Aborted);
    let rollbacks = out
        .actions
        .iter()
        .filter(|a| a.kind == ActionKind::Rollback)
        .count();
    assert_eq!(rollbacks, 3);
    assert_eq!(f.running(&v1), 10);
    assert_eq!(f.loaded(&v2), 0);
    let message = f.status.message.clone().unwrap_or_default();
    assert!(
        message.contains("errorRate 5.00 % (150/3000 requests)"),
        "{message}"
    );
    assert!(
        message.contains("threshold <= 1.10 x 1.00 % = 1.10 %"),
        "{message}"
    );
    let gate = f
        .status
        .last_analysis
        .as_ref()
        .expect("analysis")
        .gates
        .iter()
        .find(|g| g.gate == "errorRate")
        .cloned()
        .expect("gate");
    assert!(!gate.passed);
    assert_eq!(
        gate.measured, "5.00 % (150/3000 requests)",
        "3 canary nodes"
    );
    assert_eq!(f.condition("Stalled"), "True");
    assert_eq!(f.condition("Ready"), "False");
    assert_eq!(f.status.stable_revision.as_deref(), Some(v1.as_str()));
    assert_eq!(f.status.candidate_revision, None);
    let record = f
        .status
        .history
        .iter()
        .find(|r| r.revision == v2)
        .expect("v2 recorded");
    assert_eq!(
        (record.state, record.outcome),
        (RevisionState::Deprecated, Some(RevisionOutcome::Aborted))
    );
    assert_eq!(f.event_count("AnalysisFailed"), 1);
    assert_eq!(f.event_count("RolledBack"), 1);

    // Stays aborted, quietly, until the spec changes or a retry.
    for _ in 0..5 {
        let out = f.tick(600);
        assert!(out.events.is_empty() && out.actions.is_empty(), "{out:?}");
    }
    assert_eq!(phase(&f), Phase::Aborted);
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("errorRate")
    );

    f.health.insert(v2.clone(), traffic(1000, 10, 20.0));
    f.command(CommandKind::Retry);
    f.tick(1);
    assert_eq!(f.event_count("RolloutStarted"), 3, "v1, v2, v2 again");
    assert_eq!(f.status.candidate_revision.as_deref(), Some(v2.as_str()));
    assert_eq!(phase(&f), Phase::Progressing);
}

#[test]
fn pause_policy_holds_then_abort_rolls_back() {
    let (mut f, v1, v2) = failing_canary(FailurePolicy::Pause);
    let out = f.tick(10);
    assert_eq!(phase(&f), Phase::Aborted);
    assert!(out.actions.is_empty(), "held: nothing moves");
    assert_eq!(f.running(&v2), 3);
    assert_eq!(f.status.candidate_revision.as_deref(), Some(v2.as_str()));
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("held by failurePolicy Pause")
    );
    // A node joining while held gets the stable revision.
    f.join("node-new");
    f.settle(1, 3);
    assert_eq!(f.nodes["node-new"].active.as_deref(), Some(v1.as_str()));
    assert_eq!(f.running(&v2), 3);
    f.command(CommandKind::Abort);
    f.settle(1, 3);
    assert_eq!(f.running(&v1), 11);
    assert_eq!(f.loaded(&v2), 0);
    assert_eq!(f.status.candidate_revision, None);
    assert_eq!(phase(&f), Phase::Aborted);
}

#[test]
fn pause_policy_hold_can_be_promoted_past() {
    let (mut f, _v1, v2) = failing_canary(FailurePolicy::Pause);
    f.tick(10);
    assert_eq!(phase(&f), Phase::Aborted);
    f.command(CommandKind::Promote);
    f.settle(1, 10);
    f.settle(1, 3);
    assert_eq!(f.event_count("FailureOverridden"), 1);
    assert_eq!(f.status.stable_revision.as_deref(), Some(v2.as_str()));
    assert_eq!(f.running(&v2), 10);
}

#[test]
fn rolling_forward_while_stuck_starts_the_new_revision() {
    let (mut f, _v1, v2) = failing_canary(FailurePolicy::Pause);
    f.tick(10);
    assert_eq!(phase(&f), Phase::Aborted);
    f.apply(spec("v3", canary(3, vec![percent(30), percent(100)])));
    let v3 = f.revision();
    f.settle(1, 10);
    f.settle(1, 3);
    assert_eq!(f.status.stable_revision.as_deref(), Some(v3.as_str()));
    assert_eq!(f.loaded(&v2), 0);
    let record = f
        .status
        .history
        .iter()
        .find(|r| r.revision == v2)
        .expect("v2 recorded");
    assert_eq!(record.state, RevisionState::Deprecated);
    assert_eq!(f.event_count("RolloutSuperseded"), 1);
}

#[test]
fn inconclusive_analysis_pauses_and_never_passes() {
    let (mut f, v1) = stable_fleet(4);
    f.apply(spec(
        "v2",
        canary(1, vec![percent(50), analysis(30, 10), percent(100)]),
    ));
    let v2 = f.revision();
    f.health.insert(v2.clone(), traffic(10, 0, 20.0)); // below minSamples (100)
    f.settle(1, 5);
    for _ in 0..3 {
        f.tick(10);
    }
    assert_eq!(phase(&f), Phase::Paused, "{:?}", f.status.message);
    assert_eq!(
        f.status.last_analysis.as_ref().map(|a| a.verdict),
        Some(AnalysisVerdict::Inconclusive)
    );
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("inconclusive")
    );
    assert_eq!(f.event_count("AnalysisInconclusive"), 1);
    // Waiting is not progress-deadline time and never turns into a pass.
    for _ in 0..5 {
        let out = f.tick(600);
        assert!(out.events.is_empty() && out.actions.is_empty());
    }
    assert_eq!(phase(&f), Phase::Paused);
    assert_eq!(f.running(&v2), 2);
    assert_eq!(f.running(&v1), 2);
    f.command(CommandKind::Promote);
    f.settle(1, 10);
    f.settle(1, 3);
    assert_eq!(f.status.stable_revision.as_deref(), Some(v2.as_str()));
}

#[test]
fn no_data_with_fail_policy_aborts() {
    let (mut f, v1) = stable_fleet(4);
    f.apply(spec(
        "v2",
        canary(1, vec![percent(50), analysis(20, 10), percent(100)]),
    ));
    let v2 = f.revision();
    f.health.insert(v2, traffic(10, 0, 20.0));
    f.gates.no_data = NoDataPolicy::Fail;
    f.settle(1, 5);
    f.tick(10);
    f.tick(10);
    assert_eq!(phase(&f), Phase::Aborted);
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("no data")
    );
    assert_eq!(f.running(&v1), 4);
}

#[test]
fn blue_green_manual_promotion_and_keep_previous() {
    let (mut f, v1) = stable_fleet(4);
    f.apply(spec(
        "v2",
        blue_green(BlueGreenStrategy {
            auto_promotion_enabled: false,
            auto_promotion_seconds: None,
            pre_promotion_analysis: Some(window(20, 10)),
            post_promotion_analysis: Some(window(20, 10)),
            keep_previous_seconds: 120,
        }),
    ));
    let v2 = f.revision();
    let out = f.tick(1);
    assert!(out.actions.iter().all(|a| a.kind == ActionKind::Load));
    assert_eq!(f.loaded(&v2), 4);
    assert_eq!(f.running(&v2), 0, "preview is inactive");
    f.tick(1);
    assert_eq!(f.status.current_step.as_deref(), Some("1/5"));
    f.tick(10);
    f.tick(10);
    assert_eq!(
        f.status.last_analysis.as_ref().map(|a| a.verdict),
        Some(AnalysisVerdict::Passed)
    );
    assert_eq!(phase(&f), Phase::Paused);
    assert_eq!(
        f.status.message.as_deref(),
        Some("preview ready; waiting for promote")
    );
    for _ in 0..3 {
        assert!(f.tick(600).actions.is_empty());
    }
    f.command(CommandKind::Promote);
    let out = f.tick(1);
    assert_eq!(
        out.actions
            .iter()
            .filter(|a| a.kind == ActionKind::Activate)
            .count(),
        4,
        "all at once"
    );
    assert_eq!(f.running(&v2), 4);
    f.tick(1);
    f.tick(10);
    let out = f.tick(10);
    assert_eq!(
        f.status.stable_revision.as_deref(),
        Some(v2.as_str()),
        "{:?}",
        f.status.message
    );
    assert!(out.actions.is_empty(), "previous revision kept: {out:?}");
    assert_eq!(f.loaded(&v1), 4);
    assert_eq!(phase(&f), Phase::Healthy);
    assert!(f.tick(100).actions.is_empty());
    let out = f.tick(20);
    assert_eq!(
        out.actions
            .iter()
            .filter(|a| a.kind == ActionKind::Unload)
            .count(),
        4
    );
    assert_eq!(f.loaded(&v1), 0);
    assert_eq!(f.event_count("PreviousUnloaded"), 1);
}

#[test]
fn blue_green_post_promotion_failure_switches_back_instantly() {
    let (mut f, v1) = stable_fleet(4);
    f.apply(spec(
        "v2",
        blue_green(BlueGreenStrategy {
            auto_promotion_enabled: true,
            auto_promotion_seconds: Some(30),
            pre_promotion_analysis: None,
            post_promotion_analysis: Some(window(20, 10)),
            keep_previous_seconds: 300,
        }),
    ));
    let v2 = f.revision();
    f.health.insert(v2.clone(), traffic(1000, 100, 20.0));
    f.tick(1);
    f.tick(1);
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("auto promotion in 30s")
    );
    f.tick(30);
    assert_eq!(f.running(&v2), 4);
    f.tick(1);
    f.tick(10);
    let out = f.tick(10);
    assert_eq!(phase(&f), Phase::Aborted);
    assert!(
        out.actions.iter().all(|a| a.kind != ActionKind::Load),
        "v1 was still loaded"
    );
    assert_eq!(f.running(&v1), 4);
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("errorRate")
    );
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
fn a_held_rollout_never_exceeds_its_share_when_nodes_leave() {
    let (mut f, v1) = stable_fleet(4);
    f.apply(spec(
        "v2",
        canary(1, vec![percent(50), pause(None), percent(100)]),
    ));
    let v2 = f.revision();
    f.settle(1, 10);
    assert_eq!(f.running(&v2), 2);
    f.requests.pause = true;
    f.tick(1);
    assert_eq!(phase(&f), Phase::Paused);
    let others: Vec<String> = f
        .nodes
        .iter()
        .filter(|(_, n)| n.active.as_deref() == Some(v1.as_str()))
        .map(|(name, _)| name.clone())
        .collect();
    for name in &others {
        f.leave(name);
    }
    f.settle(1, 5);
    // Two nodes left, 50 % of them is one: the other returns to stable.
    assert_eq!(f.nodes.len(), 2);
    assert_eq!(f.running(&v2), 1);
    assert_eq!(f.running(&v1), 1);
    assert_eq!(phase(&f), Phase::Paused);
}
