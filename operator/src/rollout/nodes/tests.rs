//! Unit tests of per-node planning.

use super::*;
use crate::rollout::clock::time;
use crate::rollout::{LoadedRevision, NodeFailure};

fn node(name: &str, loaded: &[(&str, bool)]) -> NodeReport {
    NodeReport {
        node: name.into(),
        reachable: true,
        revisions: loaded
            .iter()
            .map(|(r, a)| LoadedRevision {
                revision: (*r).into(),
                active: *a,
                health: None,
            })
            .collect(),
        failures: vec![],
        kernel: None,
        btf: None,
        map_memory_bytes: None,
    }
}

fn targets<'a>(set: &'a [&'a str]) -> Targets<'a> {
    Targets {
        stable: Some("s"),
        candidate: Some("c"),
        current: "c",
        candidate_nodes: set,
        preload_all: false,
        max_unavailable: 1,
        retained: None,
        freeze: Freeze::None,
        excluded: &NONE_EXCLUDED,
        promoted: &NONE_EXCLUDED,
    }
}

static NONE_EXCLUDED: BTreeSet<String> = BTreeSet::new();

fn kinds(p: &NodePlan, n: &str) -> Vec<(String, ActionKind)> {
    p.actions
        .iter()
        .filter(|a| a.node == n)
        .map(|a| (a.revision.clone(), a.kind))
        .collect()
}

#[test]
fn canary_node_loads_and_activates_keeping_stable() {
    let nodes = [node("a", &[("s", true)]), node("b", &[("s", true)])];
    let p = plan(&targets(&["a"]), &nodes, &[], &[], &time(0));
    assert_eq!(
        kinds(&p, "a"),
        [
            ("c".into(), ActionKind::Load),
            ("c".into(), ActionKind::Activate)
        ]
    );
    assert!(kinds(&p, "b").is_empty());
    assert_eq!(p.counts.desired, 2);
    assert_eq!(p.counts.updated, 0);
    assert_eq!(p.counts.ready, 1);
}

#[test]
fn max_unavailable_limits_switches_in_canary_order() {
    let nodes = [
        node("a", &[("s", true)]),
        node("b", &[("s", true)]),
        node("c1", &[("s", true)]),
    ];
    let mut t = targets(&["b", "a"]);
    t.max_unavailable = 1;
    let p = plan(&t, &nodes, &[], &[], &time(0));
    assert_eq!(kinds(&p, "b").len(), 2);
    assert!(kinds(&p, "a").is_empty());
    t.max_unavailable = 2;
    let p = plan(&t, &nodes, &[], &[], &time(0));
    assert_eq!(kinds(&p, "a").len(), 2);
}

#[test]
fn failing_canary_node_uses_the_budget() {
    let mut failed = node("b", &[("s", true)]);
    failed.failures.push(NodeFailure {
        revision: "c".into(),
        reason: "VerifierRejected".into(),
        message: "invalid mem access".into(),
        at: time(1),
        attempts: 1,
    });
    let nodes = [node("a", &[("s", true)]), failed];
    let p = plan(&targets(&["b", "a"]), &nodes, &[], &[], &time(5));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.counts.failed, 1);
    assert_eq!(p.failing[0].reason, "VerifierRejected");
    assert_eq!(p.failing[0].since, Some(time(5)));
    // The first time seen is kept.
    let again = plan(&targets(&["b", "a"]), &nodes, &[], &p.failing, &time(9));
    assert_eq!(again.failing[0].since, Some(time(5)));
}

#[test]
fn node_off_the_set_returns_to_stable_and_drops_the_candidate() {
    let nodes = [node("a", &[("s", false), ("c", true)])];
    let p = plan(&targets(&[]), &nodes, &[], &[], &time(0));
    assert_eq!(
        kinds(&p, "a"),
        [
            ("s".into(), ActionKind::Rollback),
            ("c".into(), ActionKind::Unload)
        ]
    );
}

#[test]
fn joining_node_gets_stable_and_departed_node_is_unloaded() {
    let nodes = [node("new", &[])];
    let gone = [node("old", &[("s", true), ("x", false)])];
    let p = plan(&targets(&[]), &nodes, &gone, &[], &time(0));
    assert_eq!(
        kinds(&p, "new"),
        [
            ("s".into(), ActionKind::Load),
            ("s".into(), ActionKind::Activate)
        ]
    );
    assert_eq!(
        kinds(&p, "old"),
        [
            ("s".into(), ActionKind::Unload),
            ("x".into(), ActionKind::Unload)
        ]
    );
}

#[test]
fn unreachable_node_gets_nothing_and_counts_failed() {
    let mut n = node("a", &[]);
    n.reachable = false;
    let p = plan(&targets(&["a"]), &[n], &[], &[], &time(0));
    assert!(p.actions.is_empty());
    assert_eq!(p.failing[0].reason, "AgentUnreachable");
}

#[test]
fn freezes_keep_running_nodes_and_place_new_ones() {
    let nodes = [node("a", &[("s", true)]), node("b", &[])];
    let mut t = targets(&["a", "b"]);
    t.freeze = Freeze::User;
    let p = plan(&t, &nodes, &[], &[], &time(0));
    assert!(kinds(&p, "a").is_empty());
    assert_eq!(
        kinds(&p, "b"),
        [
            ("s".into(), ActionKind::Load),
            ("s".into(), ActionKind::Activate)
        ]
    );
    t.freeze = Freeze::Failure;
    let p = plan(&t, &nodes, &[], &[], &time(0));
    assert!(kinds(&p, "a").is_empty());
    assert_eq!(
        kinds(&p, "b"),
        [
            ("s".into(), ActionKind::Load),
            ("s".into(), ActionKind::Activate)
        ]
    );
}

#[test]
fn preview_and_retained_stay_loaded() {
    let nodes = [node("a", &[("old", false), ("s", true)])];
    let mut t = targets(&[]);
    t.preload_all = true;
    t.retained = Some("old");
    let p = plan(&t, &nodes, &[], &[], &time(0));
    assert_eq!(kinds(&p, "a"), [("c".into(), ActionKind::Load)]);
}

#[test]
fn failing_list_is_bounded() {
    let nodes: Vec<NodeReport> = (0..30)
        .map(|i| {
            let mut n = node(&format!("n{i:02}"), &[]);
            n.reachable = false;
            n
        })
        .collect();
    let p = plan(&targets(&[]), &nodes, &[], &[], &time(0));
    assert_eq!(p.counts.failed, 30);
    assert_eq!(p.failing.len(), MAX_FAILING_NODES);
    assert_eq!(p.failing[0].node, "n00");
}

#[test]
fn a_node_failing_stable_uses_the_budget_too() {
    let mut broken = node("z", &[]);
    broken.failures.push(NodeFailure {
        revision: "s".into(),
        reason: "AttachFailed".into(),
        message: "no such tracepoint".into(),
        at: time(1),
        attempts: 1,
    });
    let nodes = [node("a", &[("s", true)]), node("b", &[("s", true)]), broken];
    let mut t = targets(&["a", "b"]);
    t.max_unavailable = 2;
    let p = plan(&t, &nodes, &[], &[], &time(0));
    let switching = p
        .actions
        .iter()
        .filter(|a| a.kind == ActionKind::Activate)
        .count();
    assert_eq!(switching, 1);
    assert!(kinds(&p, "z").is_empty(), "a failed load is not resent");
}

#[test]
fn retries_of_an_unavailable_source_back_off_to_a_minute() {
    let delays: Vec<i64> = (1..=7).map(retry_delay).collect();
    assert_eq!(delays, [5, 10, 20, 40, 60, 60, 60]);
    assert_eq!(retry_delay(u32::MAX), RETRY_MAX_SECONDS);
    // Never called with 0, but it must not be shorter than the first wait.
    assert_eq!(retry_delay(0), RETRY_FIRST_SECONDS);
}

/// A canary node that could not fetch the candidate's source keeps its
/// place (and the budget): listed as failing, its Load and Activate held
/// back until the retry is due, then sent again.
#[test]
fn a_node_without_the_source_waits_for_its_retry_then_loads_again() {
    let mut waiting = node("b", &[("s", true)]);
    waiting.failures.push(NodeFailure {
        revision: "c".into(),
        reason: crate::rollout::SOURCE_UNAVAILABLE.into(),
        message: "source unavailable: registry r.example answered 503".into(),
        at: time(100),
        attempts: 2,
    });
    let nodes = [node("a", &[("s", true)]), waiting];
    // Retry due at 100 + 10.
    let p = plan(&targets(&["b", "a"]), &nodes, &[], &[], &time(104));
    assert!(p.actions.is_empty(), "{:?}", p.actions);
    assert_eq!(p.retry_in, Some(6));
    assert_eq!(p.counts.failed, 1);
    assert_eq!(p.counts.ready, 1);
    assert_eq!(p.unsettled, 0);
    assert_eq!(p.failing[0].reason, "SourceUnavailable");
    assert!(p.failing[0].message.contains("503"));
    let p = plan(&targets(&["b", "a"]), &nodes, &[], &p.failing, &time(110));
    assert_eq!(
        kinds(&p, "b"),
        [
            ("c".into(), ActionKind::Load),
            ("c".into(), ActionKind::Activate)
        ]
    );
    // Still listed (the retry's outcome is not known yet), since unchanged.
    assert_eq!(p.failing[0].since, Some(time(104)));
    assert_eq!(p.retry_in, None);
    // maxUnavailable 1: "a" waits for "b" either way.
    assert!(kinds(&p, "a").is_empty());
}

/// A node that cannot fetch the stable revision runs nothing: it takes
/// maxUnavailable's budget, as a node refusing it would.
#[test]
fn a_node_without_the_stable_source_counts_as_unavailable() {
    let mut joining = node("j", &[]);
    joining.failures.push(NodeFailure {
        revision: "s".into(),
        reason: crate::rollout::SOURCE_UNAVAILABLE.into(),
        message: "source unavailable: 503".into(),
        at: time(100),
        attempts: 1,
    });
    let nodes = [node("a", &[("s", true)]), joining];
    let p = plan(&targets(&["a"]), &nodes, &[], &[], &time(101));
    assert!(kinds(&p, "a").is_empty(), "{:?}", p.actions);
    assert!(kinds(&p, "j").is_empty(), "held until 105: {:?}", p.actions);
    assert_eq!(p.retry_in, Some(4));
    assert_eq!(p.failing[0].node, "j");
    // Due: the stable revision is loaded and activated again.
    let p = plan(&targets(&["a"]), &nodes, &[], &p.failing, &time(105));
    assert_eq!(
        kinds(&p, "j"),
        [
            ("s".into(), ActionKind::Load),
            ("s".into(), ActionKind::Activate)
        ]
    );
}
