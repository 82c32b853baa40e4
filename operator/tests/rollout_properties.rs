//! Property tests: canary node selection, and the state machine under any
//! sequence of clock ticks, node churn, health changes, manual requests and
//! spec changes.
// Test code: helpers outside #[test] fns panic on purpose, the panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use bpfleet_api::program::{BlueGreenStrategy, Phase};
use bpfleet_operator::rollout::plan::{Kind, Plan};
use bpfleet_operator::rollout::selection::{canary_count, canary_nodes};
use bpfleet_operator::rollout::{ActionKind, CommandKind};
use common::*;
use proptest::prelude::*;

proptest! {
    #[test]
    fn canary_selection_is_monotonic_and_stable(
        names in prop::collection::btree_set("[a-z]{1,6}-[0-9]{1,3}", 0..40),
        program in "[a-z][a-z-]{0,11}",
        a in 0i32..=100,
        b in 0i32..=100,
    ) {
        let (lo, hi) = (a.min(b), a.max(b));
        let nodes: Vec<&str> = names.iter().map(String::as_str).collect();
        let small = canary_nodes(&program, nodes.iter().copied(), lo);
        let large = canary_nodes(&program, nodes.iter().copied(), hi);
        prop_assert_eq!(small.len(), canary_count(lo, nodes.len()));
        prop_assert_eq!(large.len(), canary_count(hi, nodes.len()));
        prop_assert!(small.iter().all(|n| large.contains(n)), "{small:?} not within {large:?}");
        let reversed = canary_nodes(&program, nodes.iter().rev().copied(), lo);
        prop_assert_eq!(&reversed, &small);
        prop_assert_eq!(canary_nodes(&program, nodes.iter().copied(), lo), small);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Tick(i64),
    Join(u8),
    Leave(u8),
    Healthy(bool),
    Promote,
    Abort,
    Retry,
    Pause(bool),
    NewRevision(u8),
    Undo(u8),
    BreakNext,
    /// Node index, and whether its agent answers.
    Reachable(u8, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0i64..700).prop_map(Op::Tick),
        1 => any::<u8>().prop_map(Op::Join),
        2 => any::<u8>().prop_map(Op::Leave),
        1 => any::<bool>().prop_map(Op::Healthy),
        1 => Just(Op::Promote),
        1 => Just(Op::Abort),
        1 => Just(Op::Retry),
        1 => any::<bool>().prop_map(Op::Pause),
        2 => any::<u8>().prop_map(Op::NewRevision),
        1 => any::<u8>().prop_map(Op::Undo),
        1 => Just(Op::BreakNext),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(n, r)| Op::Reachable(n, r)),
    ]
}

fn strategy(i: u8) -> bpfleet_api::program::Strategy {
    match i % 4 {
        0 => immediate(),
        1 => canary(
            1,
            vec![
                percent(25),
                analysis(20, 10),
                pause(Some("30s")),
                percent(60),
                pause(None),
            ],
        ),
        2 => canary(2, vec![percent(50), percent(100)]),
        _ => blue_green(BlueGreenStrategy {
            auto_promotion_enabled: i % 8 == 3,
            auto_promotion_seconds: Some(20),
            pre_promotion_analysis: Some(window(20, 10)),
            post_promotion_analysis: Some(window(20, 10)),
            keep_previous_seconds: 60,
        }),
    }
}

/// Applies one operation to a fleet (a tick only moves the clock).
fn apply(f: &mut Fleet, op: &Op, serial: &mut u32) {
    match op {
        Op::Tick(_) => {}
        Op::Join(n) => f.join(&format!("node-{:02}", n % 12)),
        Op::Leave(n) => {
            if f.nodes.len() > 1 {
                let name = f.nodes.keys().nth(usize::from(*n) % f.nodes.len()).cloned();
                f.leave(&name.expect("index within the map"));
            }
        }
        Op::Healthy(good) => {
            let sample = if *good {
                traffic(1000, 10, 20.0)
            } else {
                traffic(1000, 90, 40.0)
            };
            let rev = f.revision();
            f.health.insert(rev, sample);
        }
        Op::Promote => f.command(CommandKind::Promote),
        Op::Abort => f.command(CommandKind::Abort),
        Op::Retry => f.command(CommandKind::Retry),
        Op::Pause(p) => f.requests.pause = *p,
        Op::NewRevision(i) => {
            *serial += 1;
            let mut s = spec(&format!("v{serial}"), strategy(*i));
            s.progress_deadline_seconds = 300;
            f.apply(s);
        }
        Op::Undo(i) => {
            let history = &f.status.history;
            if !history.is_empty() {
                let revision = history[usize::from(*i) % history.len()].revision.clone();
                f.command(CommandKind::Undo { revision });
            }
        }
        Op::Reachable(n, reachable) => {
            let len = f.nodes.len();
            if let Some(node) = f.nodes.values_mut().nth(usize::from(*n) % len.max(1)) {
                node.reachable = *reachable;
            }
        }
        Op::BreakNext => {
            let next = spec(&format!("v{}", *serial + 1), immediate());
            let rev = bpfleet_operator::revision::revision_id(&next).expect("id");
            f.broken.insert(rev, "VerifierRejected".into());
        }
    }
}

fn check_invariants(
    f: &Fleet,
    departed_before: &BTreeSet<String>,
    out: &bpfleet_operator::rollout::Output,
) {
    for a in &out.actions {
        if departed_before.contains(&a.node) {
            assert_eq!(
                a.kind,
                ActionKind::Unload,
                "{a:?} for a node outside the selection"
            );
        }
    }
    let st = &f.status;
    let n = f.nodes.len();
    match (&st.candidate_revision, &st.stable_revision) {
        (Some(c), _) => {
            let plan = Plan::new(&f.spec.strategy).expect("plan");
            let index = usize::try_from(st.current_step_index.unwrap_or(0)).unwrap_or(0);
            let placement = plan.placement(index);
            let allowed = canary_count(placement.percent, n);
            if let Kind::Canary { max_unavailable } = plan.kind {
                let switching = out
                    .actions
                    .iter()
                    .filter(|a| a.kind == ActionKind::Activate && a.revision == *c)
                    .count();
                assert!(
                    switching <= max_unavailable,
                    "{switching} nodes switched at once, maxUnavailable {max_unavailable}"
                );
            }
            let running = f
                .nodes
                .values()
                .filter(|n| n.reachable && n.active.as_deref() == Some(c.as_str()))
                .count();
            assert!(
                running <= allowed,
                "{running} reachable nodes run the candidate, step {index} allows {allowed}: {:?}",
                st.message
            );
        }
        (None, stable) => {
            for (name, node) in f.nodes.iter().filter(|(_, n)| n.reachable) {
                assert!(
                    node.active.is_none()
                        || node.active == *stable
                        || keeps_former_stable(st, node, stable.as_deref()),
                    "{name} runs {:?} with no rollout, stable {stable:?}, phase {:?}",
                    node.active,
                    st.phase
                );
            }
        }
    }
    if st.phase == Some(Phase::Aborted) && st.candidate_revision.is_none() {
        let stable = st.stable_revision.clone();
        assert!(
            f.nodes
                .values()
                .filter(|n| n.reachable)
                .all(|n| n.active.is_none()
                    || n.active == stable
                    || keeps_former_stable(st, n, stable.as_deref())),
            "after an abort every reachable node runs stable {stable:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn state_machine_invariants(nodes in 1usize..8, ops in prop::collection::vec(op(), 1..40)) {
        let mut f = Fleet::new(nodes, spec("v0", immediate()));
        let mut twin = Fleet::new(nodes, spec("v0", immediate()));
        twin.restart_every_call = true;
        let (mut serial, mut twin_serial) = (0, 0);
        for op in &ops {
            // Every change is followed by a reconcile at the same instant.
            apply(&mut f, op, &mut serial);
            apply(&mut twin, op, &mut twin_serial);
            let seconds = if let Op::Tick(s) = op { *s } else { 0 };
            let departed: BTreeSet<String> = f.departed.keys().cloned().collect();
            let same = f.decide(&f.status.clone());
            prop_assert_eq!(&same, &f.decide(&f.status.clone()), "not deterministic");
            let out = f.tick(seconds);
            let twin_out = twin.tick(seconds);
            prop_assert_eq!(&out, &twin_out, "restart from status diverged after {:?}", op);
            check_invariants(&f, &departed, &out);
        }
    }
}

/// A node that refused the stable revision keeps a revision that was
/// promoted once (see `rollout::nodes`).
fn keeps_former_stable(
    st: &bpfleet_api::TracerProgramStatus,
    node: &SimNode,
    stable: Option<&str>,
) -> bool {
    let refused = node
        .failures
        .iter()
        .any(|f| Some(f.revision.as_str()) == stable);
    let promoted = st.history.iter().any(|r| {
        Some(&r.revision) == node.active.as_ref()
            && r.outcome == Some(bpfleet_api::program::RevisionOutcome::Promoted)
    });
    refused && promoted
}
