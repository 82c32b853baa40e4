//! Unit tests of the machine on single calls; whole rollouts are in
//! `tests/rollout_scenarios.rs`.

use bpfleet_api::TracerProgramSpec;
use bpfleet_api::TracerProgramStatus;
use bpfleet_api::policy::HealthGates;
use bpfleet_api::program::Phase;

use crate::Error;
use crate::rollout::clock::time;
use crate::rollout::testing::{canary, none, pause_for, percent, spec};
use crate::rollout::{ActionKind, Command, CommandKind, Input, NodeReport, Output, Requests};

fn run(
    spec: &TracerProgramSpec,
    status: &TracerProgramStatus,
    nodes: &[NodeReport],
    requests: &Requests,
    now: i64,
) -> crate::Result<Output> {
    let gates = HealthGates::default();
    crate::rollout::reconcile(&Input {
        program: "p",
        generation: 1,
        spec,
        status,
        source_commit: None,
        nodes,
        departed: &[],
        gates: &gates,
        requests,
        now: time(now),
    })
}

fn nodes(n: usize) -> Vec<NodeReport> {
    (0..n).map(|i| NodeReport::new(format!("n{i}"))).collect()
}

#[test]
fn an_invalid_strategy_is_an_error() {
    let mut s = spec("a");
    s.strategy = none();
    let err = run(&s, &Default::default(), &nodes(1), &Requests::default(), 0);
    assert!(matches!(err, Err(Error::InvalidStrategy)));
}

#[test]
fn a_first_canary_places_only_the_canaries() {
    let mut s = spec("a");
    s.strategy = canary(vec![percent(50), pause_for("1m")]);
    let out = run(&s, &Default::default(), &nodes(4), &Requests::default(), 0).expect("run");
    // maxUnavailable 1: one canary this call, the rest get nothing (no stable).
    let nodes_touched: std::collections::BTreeSet<&str> =
        out.actions.iter().map(|a| a.node.as_str()).collect();
    assert_eq!(nodes_touched.len(), 1);
    assert!(out.actions.iter().all(|a| a.kind != ActionKind::Unload));
    assert_eq!(out.status.phase, Some(Phase::Progressing));
    assert_eq!(out.status.stable_revision, None);
    assert_eq!(out.status.current_step.as_deref(), Some("0/3"));
    assert_eq!(out.status.node_summary.as_deref(), Some("0/4"));
    assert_eq!(out.requeue_after, Some(601), "progress deadline");
}

#[test]
fn commands_are_carried_out_once() {
    let s = spec("a");
    let requests = Requests {
        pause: false,
        commands: vec![Command {
            id: "x1".into(),
            kind: CommandKind::Promote,
        }],
    };
    let out = run(&s, &Default::default(), &[], &requests, 0).expect("run");
    // No node selected: the rollout completes at once, then the promote has
    // nothing to act on.
    assert_eq!(out.status.phase, Some(Phase::Healthy));
    assert!(
        out.status
            .message
            .as_deref()
            .is_some_and(|m| m.starts_with("no node matches the node selector")),
        "{:?}",
        out.status.message
    );
    let reasons: Vec<&str> = out.events.iter().map(|e| e.reason.as_str()).collect();
    assert!(reasons.contains(&"RolloutCompleted"), "{reasons:?}");
    let again = run(&s, &out.status, &[], &requests, 5).expect("run");
    let acked = out.status.rollout.as_ref().expect("progress");
    assert_eq!(acked.acknowledged_requests, ["x1"]);
    assert!(again.events.is_empty());
}

#[test]
fn promote_while_held_is_reported_not_lost_silently() {
    let mut s = spec("a");
    s.strategy = canary(vec![percent(50)]);
    s.paused = true;
    let requests = Requests {
        pause: false,
        commands: vec![Command {
            id: "p1".into(),
            kind: CommandKind::Promote,
        }],
    };
    let out = run(&s, &Default::default(), &nodes(2), &requests, 0).expect("run");
    assert_eq!(out.status.phase, Some(Phase::Paused));
    assert!(
        out.events
            .iter()
            .any(|e| e.reason == "RequestIgnored" && e.warning)
    );
    assert!(out.actions.iter().all(|a| a.kind != ActionKind::Activate));
}

#[test]
fn acknowledged_ids_are_bounded() {
    let s = spec("a");
    let commands = (0..40)
        .map(|i| Command {
            id: format!("r{i}"),
            kind: CommandKind::Abort,
        })
        .collect();
    let requests = Requests {
        pause: false,
        commands,
    };
    let out = run(&s, &Default::default(), &[], &requests, 0).expect("run");
    let acked = &out.status.rollout.expect("progress").acknowledged_requests;
    assert_eq!(acked.len(), 16);
    assert_eq!(acked.last().map(String::as_str), Some("r39"));
}
