//! Unit tests of the machine on single calls; whole rollouts are in
//! `tests/rollout_scenarios.rs`.

use bpfleet_api::TracerProgramSpec;
use bpfleet_api::TracerProgramStatus;
use bpfleet_api::policy::HealthGates;
use bpfleet_api::program::{Phase, VerifyFailurePolicy, VerifyFirst};

use crate::Error;
use crate::rollout::clock::time;
use crate::rollout::testing::{canary, none, pause_for, percent, spec};
use crate::rollout::{
    ActionKind, Command, CommandKind, Input, LoadedRevision, NodeFailure, NodeReport, Output,
    Requests, SOURCE_UNAVAILABLE,
};

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
    s.strategy.verify_first = Some(VerifyFirst {
        enabled: Some(false),
        ..Default::default()
    });
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

/// Two nodes running `a` as stable, and the spec moved to `b`
/// (immediate, progress deadline 120 s): the status after `a` rolled out,
/// and the two revisions.
fn stable_a_then_b() -> (TracerProgramSpec, TracerProgramStatus, String, String) {
    let a = spec("a");
    let mut b = spec("b");
    b.progress_deadline_seconds = 120;
    let (ra, rb) = (
        crate::revision::revision_id(&a).expect("id"),
        crate::revision::revision_id(&b).expect("id"),
    );
    let on_a = [holding("n0", &[(&ra, true)]), holding("n1", &[(&ra, true)])];
    let out = run(&a, &Default::default(), &on_a, &Requests::default(), 0).expect("run");
    assert_eq!(out.status.stable_revision.as_deref(), Some(ra.as_str()));
    (b, out.status, ra, rb)
}

fn holding(node: &str, revisions: &[(&str, bool)]) -> NodeReport {
    NodeReport {
        revisions: revisions
            .iter()
            .map(|(r, active)| LoadedRevision {
                revision: (*r).into(),
                active: *active,
                health: None,
            })
            .collect(),
        ..NodeReport::new(node)
    }
}

fn refused(revision: &str, reason: &str, at: i64, attempts: u32) -> NodeFailure {
    NodeFailure {
        revision: revision.into(),
        reason: reason.into(),
        message: "source unavailable: r.example:5000 answered 503 Service Unavailable".into(),
        at: time(at),
        attempts,
    }
}

fn loads_of<'a>(out: &'a Output, node: &str) -> Vec<(&'a str, ActionKind)> {
    out.actions
        .iter()
        .filter(|a| a.node == node)
        .map(|a| (a.revision.as_str(), a.kind))
        .collect()
}

/// n1's registry is down: the rollout neither fails nor hammers it. n1
/// is listed as `SourceUnavailable` (one event), its Load is sent again
/// at 5, 10, 20, 40 s intervals while the machine is called every second,
/// and the progress deadline alone fails the rollout, naming the node
/// and the registry's answer.
#[test]
fn a_node_whose_registry_is_down_waits_with_backoff_until_the_deadline() {
    let (b, status, ra, rb) = stable_a_then_b();
    let none = Requests::default();
    let on_a = [holding("n0", &[(&ra, true)]), holding("n1", &[(&ra, true)])];
    let out = run(&b, &status, &on_a, &none, 100).expect("run");
    assert_eq!(
        loads_of(&out, "n1"),
        [
            (rb.as_str(), ActionKind::Load),
            (rb.as_str(), ActionKind::Activate)
        ]
    );
    // n0 switched; n1's agent could not pull.
    let n0 = holding("n0", &[(&ra, false), (&rb, true)]);
    let mut n1 = holding("n1", &[(&ra, true)]);
    n1.failures = vec![refused(&rb, SOURCE_UNAVAILABLE, 100, 1)];
    let mut status = out.status;
    let mut loads = Vec::new();
    let mut events = Vec::new();
    let mut last = None;
    for now in 101..=221 {
        let nodes = [n0.clone(), n1.clone()];
        let out = run(&b, &status, &nodes, &none, now).expect("run");
        assert_eq!(out.status.phase, Some(Phase::Progressing), "at {now}");
        let failing = &out.status.failing_nodes;
        assert_eq!(failing.len(), 1, "at {now}");
        assert_eq!(
            (failing[0].node.as_str(), failing[0].reason.as_str()),
            ("n1", "SourceUnavailable")
        );
        assert_eq!(out.status.nodes.failed, 1);
        let message = out.status.message.clone().unwrap_or_default();
        assert!(
            message.contains("cannot fetch its source") && message.contains("503"),
            "{message}"
        );
        events.extend(out.events.iter().map(|e| (now, e.clone())));
        // The same input again: same status, no event (as every reconcile).
        let again = run(&b, &out.status, &nodes, &none, now).expect("run");
        assert_eq!(again.status, out.status);
        assert!(again.events.is_empty(), "{:?}", again.events);
        if loads_of(&out, "n1").is_empty() {
            // Asked back no later than the retry is due.
            let due = crate::rollout::nodes::retry_in(&n1.failures[0], now);
            assert!(out.requeue_after.is_some_and(|r| r <= due), "at {now}");
        } else {
            assert_eq!(
                loads_of(&out, "n1"),
                [
                    (rb.as_str(), ActionKind::Load),
                    (rb.as_str(), ActionKind::Activate)
                ]
            );
            loads.push(now);
            // The registry is still down: one more attempt failed.
            let attempts = n1.failures[0].attempts + 1;
            n1.failures = vec![refused(&rb, SOURCE_UNAVAILABLE, now, attempts)];
        }
        assert!(loads_of(&out, "n0").is_empty());
        status = out.status;
        last = Some(now);
    }
    assert_eq!(last, Some(221));
    assert_eq!(loads, [105, 115, 135, 175]);
    assert_eq!(events.len(), 1, "{events:?}");
    let (at, e) = &events[0];
    assert_eq!(
        (*at, e.reason.as_str(), e.warning),
        (101, "SourceUnavailable", true)
    );
    assert!(
        e.message.contains("n1") && e.message.contains("503"),
        "{}",
        e.message
    );

    // Progress was last made at 101 (n0 switched): 121 s later, the
    // deadline fails the rollout and every node returns to `a`.
    let out = run(&b, &status, &[n0, n1], &none, 222).expect("run");
    assert_eq!(out.status.phase, Some(Phase::Aborted));
    let message = out.status.message.clone().unwrap_or_default();
    assert!(
        message.contains("progressDeadlineSeconds 120")
            && message.contains("n1")
            && message.contains("SourceUnavailable")
            && message.contains("503"),
        "{message}"
    );
    assert!(
        out.events
            .iter()
            .any(|e| e.reason == "ProgressDeadlineExceeded")
    );
    assert_eq!(
        loads_of(&out, "n0"),
        [
            (ra.as_str(), ActionKind::Rollback),
            (rb.as_str(), ActionKind::Unload)
        ]
    );
}

/// The registry comes back: the next retry loads, and the rollout
/// completes as if nothing happened.
#[test]
fn a_node_whose_registry_is_back_completes_the_rollout() {
    let (b, status, ra, rb) = stable_a_then_b();
    let none = Requests::default();
    let on_a = [holding("n0", &[(&ra, true)]), holding("n1", &[(&ra, true)])];
    let out = run(&b, &status, &on_a, &none, 100).expect("run");
    let n0 = holding("n0", &[(&ra, false), (&rb, true)]);
    let mut n1 = holding("n1", &[(&ra, true)]);
    n1.failures = vec![refused(&rb, SOURCE_UNAVAILABLE, 100, 1)];
    let out = run(&b, &out.status, &[n0.clone(), n1], &none, 103).expect("run");
    assert!(out.actions.is_empty());
    assert_eq!(out.requeue_after, Some(2));
    let n1 = holding("n1", &[(&ra, false), (&rb, true)]);
    let out = run(&b, &out.status, &[n0, n1], &none, 105).expect("run");
    assert_eq!(out.status.phase, Some(Phase::Healthy));
    assert_eq!(out.status.stable_revision.as_deref(), Some(rb.as_str()));
    assert!(out.status.failing_nodes.is_empty());
}

/// The contrast: a refusal of the revision itself fails the rollout at
/// once (maxProgramFailures 0), and the node gets nothing more.
#[test]
fn a_refused_revision_fails_the_rollout_at_once() {
    let (b, status, ra, rb) = stable_a_then_b();
    let none = Requests::default();
    let on_a = [holding("n0", &[(&ra, true)]), holding("n1", &[(&ra, true)])];
    let out = run(&b, &status, &on_a, &none, 100).expect("run");
    let n0 = holding("n0", &[(&ra, false), (&rb, true)]);
    let mut n1 = holding("n1", &[(&ra, true)]);
    n1.failures = vec![refused(&rb, "LoadRefused", 100, 1)];
    let out = run(&b, &out.status, &[n0, n1], &none, 101).expect("run");
    assert_eq!(out.status.phase, Some(Phase::Aborted));
    assert!(out.events.iter().any(|e| e.reason == "ProgramLoadFailed"));
    assert!(loads_of(&out, "n1").is_empty());
}

/// A revision the verifier rejects on every node aborts the rollout; the
/// status counts then agree with the abort's message: every node is
/// counted failed and listed with that revision, while all of them run
/// the stable revision (ready), and the conditions stay on the abort.
#[test]
fn counts_after_an_abort_agree_with_its_message() {
    let (b, status, ra, rb) = stable_a_then_b();
    let none = Requests::default();
    let on_a = [holding("n0", &[(&ra, true)]), holding("n1", &[(&ra, true)])];
    let out = run(&b, &status, &on_a, &none, 100).expect("run");
    let rejected = |node: &str| NodeReport {
        failures: vec![NodeFailure {
            revision: rb.clone(),
            reason: "VerifierRejected".into(),
            message: "R1 invalid mem access 'scalar'".into(),
            at: time(100),
            attempts: 1,
        }],
        ..holding(node, &[(&ra, true)])
    };
    let failed = [rejected("n0"), rejected("n1")];
    let mut status = out.status;
    for now in 101..=103 {
        let out = run(&b, &status, &failed, &none, now).expect("run");
        let s = &out.status;
        assert_eq!(s.phase, Some(Phase::Aborted), "at {now}");
        let message = s.message.clone().unwrap_or_default();
        assert!(message.contains("2 node(s) failed to load"), "{message}");
        assert_eq!(
            (
                s.nodes.desired,
                s.nodes.failed,
                s.nodes.ready,
                s.nodes.updated
            ),
            (2, 2, 2, 0),
            "at {now}: {:?}",
            s.nodes
        );
        let listed: Vec<(&str, Option<&str>, &str)> = s
            .failing_nodes
            .iter()
            .map(|f| (f.node.as_str(), f.revision.as_deref(), f.reason.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("n0", Some(rb.as_str()), "VerifierRejected"),
                ("n1", Some(rb.as_str()), "VerifierRejected")
            ]
        );
        // The stable revision stays where it is: nothing to do on the nodes.
        assert!(out.actions.is_empty(), "{:?}", out.actions);
        status = out.status;
    }
}

/// The spec of `stable_a_then_b` moved to a canary that verifies first.
fn verifying_canary(policy: VerifyFailurePolicy, max_concurrent: i32) -> TracerProgramSpec {
    let (mut b, ..) = stable_a_then_b();
    b.strategy = canary(vec![percent(50), pause_for("1m")]);
    b.strategy.verify_first = Some(VerifyFirst {
        enabled: None,
        on_failure: policy,
        max_concurrent,
    });
    b
}

fn rejected_on(node: &str, revision: &str, running: &str, kernel: &str) -> NodeReport {
    NodeReport {
        failures: vec![NodeFailure {
            revision: revision.into(),
            reason: "VerifierRejected".into(),
            message: "verifier rejected program count: 12: (85) call bpf_ringbuf_output#130\nunknown func bpf_ringbuf_output#130".into(),
            at: time(103),
            attempts: 1,
        }],
        kernel: Some(kernel.into()),
        ..holding(node, &[(running, true)])
    }
}

/// Verification is on by default for a canary: the candidate is sent to
/// every node, at most `maxConcurrent` at once, and nothing is switched
/// before every node answered.
#[test]
fn a_canary_first_loads_the_candidate_everywhere_in_bounded_batches() {
    let (_, status, ra, rb) = stable_a_then_b();
    let b = verifying_canary(VerifyFailurePolicy::Block, 1);
    let none = Requests::default();
    let on_a = [holding("n0", &[(&ra, true)]), holding("n1", &[(&ra, true)])];
    let out = run(&b, &status, &on_a, &none, 100).expect("run");
    assert_eq!(out.actions.len(), 2, "{:?}", out.actions);
    assert!(
        out.actions
            .iter()
            .all(|a| a.kind == ActionKind::Load && a.revision == rb)
    );
    assert_eq!(out.parallel, Some(1), "one node loading at a time");
    let v = out.status.verification.clone().expect("verification");
    assert_eq!(
        (v.result.as_str(), v.pending, v.verified),
        ("Verifying", 2, 0)
    );
    // n0 loaded it (n1's Load still under way): still no switch.
    let one = [
        holding("n0", &[(&ra, true), (&rb, false)]),
        holding("n1", &[(&ra, true)]),
    ];
    let out = run(&b, &out.status, &one, &none, 101).expect("run");
    assert_eq!(loads_of(&out, "n1"), vec![(rb.as_str(), ActionKind::Load)]);
    assert!(out.actions.iter().all(|a| a.kind == ActionKind::Load));
    assert_eq!(out.status.current_step.as_deref(), Some("0/3"));
    // Both loaded: verified, and the first step switches one node.
    let both = [
        holding("n0", &[(&ra, true), (&rb, false)]),
        holding("n1", &[(&ra, true), (&rb, false)]),
    ];
    let out = run(&b, &out.status, &both, &none, 102).expect("run");
    let v = out.status.verification.clone().expect("verification");
    assert_eq!((v.result.as_str(), v.verified), ("Passed", 2));
    assert!(out.events.iter().any(|e| e.reason == "Verified"));
    let switched: Vec<_> = out
        .actions
        .iter()
        .filter(|a| a.kind == ActionKind::Activate)
        .collect();
    assert_eq!(switched.len(), 1, "{:?}", out.actions);
    // Loaded everywhere: no Load is needed for the switch.
    assert!(out.actions.iter().all(|a| a.kind != ActionKind::Load));
}

/// `onFailure: Block`: one node's verifier refuses the candidate; once
/// every node answered the rollout fails naming the node, its kernel and
/// the verifier's line, and no node was ever switched.
#[test]
fn a_node_that_cannot_load_blocks_the_rollout_before_any_switch() {
    let (_, status, ra, rb) = stable_a_then_b();
    let b = verifying_canary(VerifyFailurePolicy::Block, 64);
    let none = Requests::default();
    // n1 refused, n0 still loading: the machine waits for n0.
    let waiting = [
        holding("n0", &[(&ra, true)]),
        rejected_on("n1", &rb, &ra, "5.4.0-old"),
    ];
    let out = run(&b, &status, &waiting, &none, 102).expect("run");
    assert_eq!(out.status.phase, Some(Phase::Progressing));
    assert_eq!(loads_of(&out, "n0"), vec![(rb.as_str(), ActionKind::Load)]);
    // n1's agent says its kernel has no BTF; n0's did not say.
    let answered = [
        holding("n0", &[(&ra, true), (&rb, false)]),
        NodeReport {
            btf: Some(false),
            ..rejected_on("n1", &rb, &ra, "5.4.0-old")
        },
    ];
    let out = run(&b, &out.status, &answered, &none, 103).expect("run");
    assert_eq!(out.status.phase, Some(Phase::Aborted));
    let message = out.status.message.clone().unwrap_or_default();
    assert!(
        message.contains("VerificationFailed")
            || out.events.iter().any(|e| e.reason == "VerificationFailed"),
        "{message}"
    );
    assert!(message.contains("kernel 5.4.0-old: n1"), "{message}");
    assert!(
        message.contains("unknown func bpf_ringbuf_output#130"),
        "{message}"
    );
    assert!(out.actions.iter().all(|a| a.kind != ActionKind::Activate));
    // The candidate is unloaded where it loaded; n0 stays on a.
    assert_eq!(
        loads_of(&out, "n0"),
        vec![(rb.as_str(), ActionKind::Unload)]
    );
    let v = out.status.verification.clone().expect("verification");
    assert_eq!(v.result, "Failed");
    assert_eq!(v.failed_nodes[0].node, "n1");
    assert_eq!(v.failed_nodes[0].kernel_release, "5.4.0-old");
    assert_eq!(
        v.failed_nodes[0].first_error,
        "unknown func bpf_ringbuf_output#130"
    );
    let btf: Vec<(&str, Option<&str>)> = v
        .kernels
        .iter()
        .map(|k| (k.kernel_release.as_str(), k.btf.as_deref()))
        .collect();
    assert_eq!(btf, [("5.4.0-old", Some("Absent")), ("unknown", None)]);
}

/// `onFailure: Exclude`: the refusing node is left out, keeps running the
/// stable revision through the whole rollout and after it, and the rest
/// rolls out; `maxUnavailable` 1 is not used up by the excluded node.
#[test]
fn an_excluded_node_keeps_its_revision_while_the_rest_rolls_out() {
    let (_, status, ra, rb) = stable_a_then_b();
    let b = verifying_canary(VerifyFailurePolicy::Exclude, 64);
    let none = Requests::default();
    let answered = [
        holding("n0", &[(&ra, true), (&rb, false)]),
        rejected_on("n1", &rb, &ra, "5.4.0-old"),
        holding("n2", &[(&ra, true), (&rb, false)]),
    ];
    let out = run(&b, &status, &answered, &none, 103).expect("run");
    assert_eq!(
        out.status.phase,
        Some(Phase::Progressing),
        "{:?}",
        out.status.message
    );
    assert!(
        out.events
            .iter()
            .any(|e| e.reason == "NodesExcluded" && e.message.contains("n1"))
    );
    assert_eq!(
        out.status.verification.as_ref().map(|v| v.result.as_str()),
        Some("Excluded")
    );
    assert!(loads_of(&out, "n1").is_empty(), "{:?}", out.actions);
    // 50 % of the two eligible nodes: one switches.
    let activated: Vec<&str> = out
        .actions
        .iter()
        .filter(|a| a.kind == ActionKind::Activate)
        .map(|a| a.node.as_str())
        .collect();
    assert_eq!(activated.len(), 1);
    assert_ne!(activated[0], "n1");
    // Everyone eligible on b, the pause promoted: the rollout completes
    // and n1 still runs (and holds) a.
    let done = [
        holding("n0", &[(&ra, false), (&rb, true)]),
        rejected_on("n1", &rb, &ra, "5.4.0-old"),
        holding("n2", &[(&ra, false), (&rb, true)]),
    ];
    let promote = Requests {
        pause: false,
        commands: vec![Command {
            id: "p1".into(),
            kind: CommandKind::Promote,
        }],
    };
    let out = run(&b, &out.status, &done, &promote, 104).expect("run");
    assert_eq!(out.status.stable_revision.as_deref(), Some(rb.as_str()));
    assert!(loads_of(&out, "n1").is_empty(), "{:?}", out.actions);
    assert_eq!(out.status.phase, Some(Phase::Degraded));
    assert_eq!(out.status.nodes.failed, 1);
}
