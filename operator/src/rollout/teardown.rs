//! Deleting a TracerProgram: before its finalizer goes, every revision is
//! unloaded from every node that holds one, selected or not. The reconciler
//! calls [`teardown`] instead of [`super::reconcile`] once the object has a
//! deletion timestamp, and removes the finalizer when the returned actions
//! are empty and no node is unreachable (an unreachable agent may still hold
//! pins).

use bpfleet_api::program::Phase;

use super::clock::time;
use super::conditions::{self, Facts};
use super::{ActionKind, Event, Input, NodeAction, Output};

/// Next status, `Unload` actions and events while the object is deleted.
pub fn teardown(input: &Input<'_>) -> Output {
    let now = time(super::clock::secs(&input.now));
    let mut actions = Vec::new();
    let mut holding = 0;
    let mut unreachable = 0;
    for node in input.nodes.iter().chain(input.departed) {
        if !node.reachable {
            unreachable += 1;
            continue;
        }
        if !node.revisions.is_empty() {
            holding += 1;
        }
        for r in &node.revisions {
            actions.push(NodeAction {
                node: node.node.clone(),
                revision: r.revision.clone(),
                kind: ActionKind::Unload,
            });
        }
    }
    actions.sort();
    let message = if holding == 0 && unreachable == 0 {
        "unloaded from every node".to_string()
    } else {
        format!("unloading from {holding} node(s); {unreachable} node(s) unreachable")
    };
    let mut events = Vec::new();
    if input.status.phase != Some(Phase::Terminating) {
        events.push(Event {
            warning: false,
            reason: "Terminating".into(),
            message: "the program is being unloaded from every node".into(),
        });
    }
    let mut status = input.status.clone();
    status.observed_generation = Some(input.generation);
    status.phase = Some(Phase::Terminating);
    status.conditions = conditions::build(
        &input.status.conditions,
        &Facts {
            phase: Phase::Terminating,
            message: &message,
            stall_reason: "",
            failed_nodes: unreachable,
            generation: input.generation,
            now: &now,
        },
    );
    status.message = Some(message);
    Output {
        status,
        requeue_after: (!actions.is_empty() || unreachable > 0).then_some(5),
        actions,
        events,
        parallel: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::testing::spec;
    use crate::rollout::{LoadedRevision, NodeReport, Requests};
    use bpfleet_api::TracerProgramStatus;
    use bpfleet_api::policy::HealthGates;

    #[test]
    fn unloads_everything_everywhere_once() {
        let mut a = NodeReport::new("a");
        for (r, active) in [("r1", true), ("r2", false)] {
            a.revisions.push(LoadedRevision {
                revision: r.into(),
                active,
                health: None,
            });
        }
        let mut gone = NodeReport::new("gone");
        gone.revisions.push(LoadedRevision {
            revision: "r1".into(),
            active: true,
            health: None,
        });
        let nodes = [a, NodeReport::new("b")];
        let departed = [gone];
        let (spec, gates, requests) = (spec("x"), HealthGates::default(), Requests::default());
        let status = TracerProgramStatus::default();
        let input = Input {
            program: "p",
            generation: 3,
            spec: &spec,
            status: &status,
            source_commit: None,
            nodes: &nodes,
            departed: &departed,
            gates: &gates,
            requests: &requests,
            now: time(1_000),
        };
        let out = teardown(&input);
        assert_eq!(out.actions.len(), 3);
        assert!(out.actions.iter().all(|a| a.kind == ActionKind::Unload));
        assert_eq!(out.status.phase, Some(Phase::Terminating));
        assert_eq!(out.events.len(), 1);
        let again = teardown(&Input {
            status: &out.status,
            nodes: &[NodeReport::new("a"), NodeReport::new("b")],
            departed: &[],
            ..input
        });
        assert!(again.actions.is_empty() && again.events.is_empty());
        assert_eq!(
            again.status.message.as_deref(),
            Some("unloaded from every node")
        );
    }
}
