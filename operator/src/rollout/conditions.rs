//! kstatus conditions: `Ready`, `Reconciling` and `Stalled`, which Flux,
//! Argo CD and `kubectl wait` understand without plugins, plus `Paused` and
//! `Degraded`. Each carries `observedGeneration`; `lastTransitionTime` only
//! moves when the condition's status flips, so recomputing an unchanged
//! status leaves it byte for byte the same.

use bpfleet_api::program::Phase;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const PAUSED: &str = "Paused";
pub const DEGRADED: &str = "Degraded";

/// What the conditions are computed from.
pub struct Facts<'a> {
    pub phase: Phase,
    pub message: &'a str,
    /// CamelCase reason of the last abort, for `Stalled`.
    pub stall_reason: &'a str,
    pub failed_nodes: i32,
    pub generation: i64,
    pub now: &'a Time,
}

/// The five conditions, in a fixed order.
pub fn build(previous: &[Condition], f: &Facts<'_>) -> Vec<Condition> {
    let phase = phase_name(f.phase);
    let degraded = f.failed_nodes > 0 || f.phase == Phase::Aborted;
    let degraded_message = if f.failed_nodes > 0 {
        format!("{} node(s) failing", f.failed_nodes)
    } else if f.phase == Phase::Aborted {
        f.message.to_string()
    } else {
        "no node failing".to_string()
    };
    let set = [
        (
            READY,
            f.phase == Phase::Healthy && f.failed_nodes == 0,
            phase,
            f.message.to_string(),
        ),
        (
            RECONCILING,
            matches!(f.phase, Phase::Progressing | Phase::Pending),
            phase,
            f.message.to_string(),
        ),
        (
            STALLED,
            f.phase == Phase::Aborted,
            if f.phase == Phase::Aborted {
                f.stall_reason
            } else {
                "NotStalled"
            },
            if f.phase == Phase::Aborted {
                f.message.to_string()
            } else {
                String::new()
            },
        ),
        (
            PAUSED,
            f.phase == Phase::Paused,
            if f.phase == Phase::Paused {
                "Paused"
            } else {
                "NotPaused"
            },
            if f.phase == Phase::Paused {
                f.message.to_string()
            } else {
                String::new()
            },
        ),
        (
            DEGRADED,
            degraded,
            if f.failed_nodes > 0 {
                "NodesFailing"
            } else if degraded {
                "RolloutAborted"
            } else {
                "AllNodesHealthy"
            },
            degraded_message,
        ),
    ];
    set.into_iter()
        .map(|(kind, on, reason, message)| {
            let status = if on { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c.type_ == kind && c.status == status)
                .map_or_else(|| f.now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: kind.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message,
                observed_generation: Some(f.generation),
                last_transition_time: since,
            }
        })
        .collect()
}

/// The phase as written in status.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "Pending",
        Phase::Progressing => "Progressing",
        Phase::Paused => "Paused",
        Phase::Healthy => "Healthy",
        Phase::Degraded => "Degraded",
        Phase::Aborted => "Aborted",
        Phase::Terminating => "Terminating",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::clock::time;

    fn get<'a>(c: &'a [Condition], t: &str) -> &'a Condition {
        c.iter().find(|c| c.type_ == t).expect("condition")
    }

    fn facts(phase: Phase, failed: i32, now: &Time) -> Facts<'_> {
        Facts {
            phase,
            message: "m",
            stall_reason: "AnalysisFailed",
            failed_nodes: failed,
            generation: 7,
            now,
        }
    }

    #[test]
    fn healthy_is_ready_only() {
        let now = time(100);
        let c = build(&[], &facts(Phase::Healthy, 0, &now));
        assert_eq!(c.len(), 5);
        assert_eq!(get(&c, READY).status, "True");
        for t in [RECONCILING, STALLED, PAUSED, DEGRADED] {
            assert_eq!(get(&c, t).status, "False", "{t}");
        }
        assert!(c.iter().all(|c| c.observed_generation == Some(7)));
    }

    #[test]
    fn aborted_is_stalled_and_degraded() {
        let now = time(100);
        let c = build(&[], &facts(Phase::Aborted, 0, &now));
        assert_eq!(get(&c, STALLED).status, "True");
        assert_eq!(get(&c, STALLED).reason, "AnalysisFailed");
        assert_eq!(get(&c, DEGRADED).status, "True");
        assert_eq!(get(&c, READY).status, "False");
    }

    #[test]
    fn transition_time_moves_only_on_flip() {
        let t1 = time(100);
        let t2 = time(200);
        let first = build(&[], &facts(Phase::Progressing, 0, &t1));
        let same = build(&first, &facts(Phase::Progressing, 0, &t2));
        assert_eq!(first, same);
        let flipped = build(&first, &facts(Phase::Paused, 1, &t2));
        assert_eq!(get(&flipped, PAUSED).last_transition_time, t2);
        assert_eq!(get(&flipped, DEGRADED).last_transition_time, t2);
        assert_eq!(get(&flipped, READY).last_transition_time, t1);
    }
}
