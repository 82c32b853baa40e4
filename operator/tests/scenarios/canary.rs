//! Canary rollouts: steps, pauses, analysis, gate failures under both
//! failure policies, inconclusive analysis, rolling forward while stuck.

use super::*;
use crate::common::*;
use bpfleet_api::policy::NoDataPolicy;
use bpfleet_api::program::{AnalysisVerdict, FailurePolicy, Phase, RevisionOutcome, RevisionState};
use bpfleet_operator::gates::NodeSample;
use bpfleet_operator::rollout::{ActionKind, CommandKind};

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

#[test]
fn a_thousand_nodes_canary_respects_share_and_max_unavailable() {
    let (mut f, v1) = stable_fleet(1000);
    f.apply(spec(
        "v2",
        canary(50, vec![percent(10), pause(Some("30s")), percent(100)]),
    ));
    let v2 = f.revision();
    let mut ticks = 0;
    while f.status.stable_revision.as_deref() != Some(v2.as_str()) {
        let before = f.running(&v2);
        let out = f.tick(10);
        let switched = out
            .actions
            .iter()
            .filter(|a| a.kind == ActionKind::Activate)
            .count();
        assert!(switched <= 50, "{switched} switched at once");
        if f.status.current_step_index == Some(0) {
            assert!(f.running(&v2) <= 100);
        }
        assert!(f.running(&v2) >= before, "never backwards");
        ticks += 1;
        // One pass loads the candidate everywhere (64 at a time), then the
        // steps switch 50 at a time.
        assert!(ticks < 40, "stuck: {:?}", f.status.message);
    }
    assert_eq!(f.running(&v2), 1000);
    assert_eq!(f.loaded(&v1), 0);
    assert_eq!(f.status.node_summary.as_deref(), Some("1000/1000"));
    let v = f.status.verification.clone().expect("verified first");
    assert_eq!(
        (v.result.as_str(), v.verified, v.nodes),
        ("Passed", 1000, 1000)
    );
}

#[test]
fn an_aborted_revision_applied_again_after_another_is_a_fresh_attempt() {
    let (mut f, v1, _v2) = failing_canary(FailurePolicy::Rollback);
    f.tick(10);
    assert_eq!(phase(&f), Phase::Aborted);
    let aborted = f.spec.clone();
    // Re-applying the very same spec changes nothing.
    f.apply(aborted.clone());
    assert!(f.tick(1).events.is_empty());
    assert_eq!(phase(&f), Phase::Aborted);
    // Back to v1, then v2 again: a new attempt.
    f.apply(spec("v1", immediate()));
    f.settle(1, 3);
    assert_eq!(phase(&f), Phase::Healthy);
    assert_eq!(f.status.current_revision.as_deref(), Some(v1.as_str()));
    f.apply(aborted);
    f.tick(1);
    assert_eq!(phase(&f), Phase::Progressing);
    assert_eq!(f.event_count("RolloutStarted"), 3, "v1, v2, v2 again");
}

/// A candidate that serves as well as stable but costs twice the BPF time
/// per run fails `maxRunTimeRatio`, and every node goes back to stable.
#[test]
fn canary_costing_twice_per_run_fails_the_run_time_gate() {
    let (mut f, v1) = stable_fleet(10);
    f.apply(spec(
        "v2",
        canary(3, vec![percent(30), analysis(30, 10), percent(100)]),
    ));
    let v2 = f.revision();
    let mut costly = traffic(1000, 10, 20.0);
    costly.run_time_ns_delta *= 2;
    f.health.insert(v2.clone(), costly);
    f.gates.max_run_time_ratio = Some(1.2);
    f.gates.consecutive_failure_limit = 2;
    f.settle(1, 5);
    assert_eq!(f.running(&v2), 3);
    f.tick(10);
    f.tick(10);
    assert_eq!(phase(&f), Phase::Aborted);
    assert_eq!((f.running(&v1), f.loaded(&v2)), (10, 0));
    let message = f.status.message.clone().unwrap_or_default();
    assert!(
        message.contains(
            "runTimePerRun 1000 ns per run (60000 runs) (threshold <= 1.20 x 500 ns = 600 ns)"
        ),
        "{message}"
    );
    // The other gates passed: the cost alone failed it.
    let gates = &f.status.last_analysis.as_ref().expect("analysis").gates;
    assert!(
        gates
            .iter()
            .all(|g| g.passed == (g.gate != "runTimePerRun")),
        "{gates:?}"
    );
}

/// A candidate that serves well but whose nodes spend too much of their CPU
/// time in softirq fails `maxNodeSoftirqPercent` on its worst node, named in
/// the result, and every node goes back to stable. The figures are
/// node-wide: stable nodes running as hot are not judged.
#[test]
fn canary_whose_nodes_spend_too_long_in_softirq_is_rolled_back() {
    let (mut f, v1) = stable_fleet(10);
    let busy = |softirq: f64| NodeSample {
        softirq_percent: Some(softirq),
        system_cpu_percent: Some(10.0),
        agent_cpu_percent: Some(1.5),
        agent_rss_bytes: Some(48 << 20),
    };
    let names: Vec<String> = f.nodes.keys().cloned().collect();
    for n in &names {
        f.node_health.insert(n.clone(), busy(8.0));
    }
    f.apply(spec(
        "v2",
        canary(3, vec![percent(30), analysis(30, 10), percent(100)]),
    ));
    let v2 = f.revision();
    f.gates.max_node_softirq_percent = Some(5.0);
    f.gates.max_agent_rss_mib = Some(256);
    f.gates.consecutive_failure_limit = 2;
    f.settle(1, 5);
    assert_eq!(f.running(&v2), 3);
    // The hottest canary node is the one the gate names.
    let hottest = f
        .nodes
        .iter()
        .filter(|(_, n)| n.active.as_deref() == Some(v2.as_str()))
        .map(|(name, _)| name.clone())
        .nth(1)
        .expect("a second canary node");
    f.node_health.insert(hottest.clone(), busy(12.5));
    f.tick(10);
    f.tick(10);
    assert_eq!(phase(&f), Phase::Aborted);
    assert_eq!((f.running(&v1), f.loaded(&v2)), (10, 0));
    let message = f.status.message.clone().unwrap_or_default();
    assert!(
        message.contains(&format!(
            "nodeSoftirq 12.50 % on {hottest} (threshold <= 5.00 %)"
        )),
        "{message}"
    );
    let gates = &f.status.last_analysis.as_ref().expect("analysis").gates;
    let softirq = gates
        .iter()
        .find(|g| g.gate == "nodeSoftirq")
        .expect("nodeSoftirq gate");
    assert_eq!(
        softirq.message.as_deref(),
        Some(format!("worst of 3 candidate node(s) reporting: {hottest}").as_str())
    );
    // The other gates passed (agent memory among them): softirq alone
    // failed it.
    assert!(
        gates.iter().all(|g| g.passed == (g.gate != "nodeSoftirq")),
        "{gates:?}"
    );
    assert!(
        gates
            .iter()
            .any(|g| g.gate == "agentRss" && g.measured.starts_with("48.0 MiB on node-")),
        "{gates:?}"
    );
}
