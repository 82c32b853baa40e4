//! The `BudgetEnforced` condition: what the agents report of a program's
//! CPU budget (`spec.budgets.maxCpuOverheadPercent` of its TracerPolicy,
//! enforced on each node by the agent, see `docs/operator.md`), summed up
//! on the TracerProgram, and the programs' conditions summed up on the
//! TracerPolicy. Pure: the reconcilers pass in what they saw.
//!
//! True while some node runs the program over its budget or with less
//! sampling than the policy asks for: reason `CannotSample` (a node where
//! the program is over budget and does not declare sampling, so nothing
//! was cut), `OverBudget` (over budget and `reduceSamplingOnBreach` is
//! false, or the sampling is at the agent's floor), else
//! `SamplingReduced`. False (`Within`) when every node reporting is
//! within budget at the requested sampling. Absent when no node reports
//! a budget for the program.

use bpfleet_proto::v1::{CpuBudgetState as State, CpuBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::observe::truncate;

pub const BUDGET_ENFORCED: &str = "BudgetEnforced";
/// Nodes named in a condition's message, at most.
const NAMED: usize = 5;

fn state(s: &CpuBudgetStatus) -> State {
    State::try_from(s.state).unwrap_or(State::Unspecified)
}

/// One node's figures, for a message.
fn node_text(node: &str, s: &CpuBudgetStatus) -> String {
    let measured = s.measured_cpu_percent.map_or_else(
        || "not measured yet".to_string(),
        |m| format!("{m:.2} % CPU"),
    );
    let requested = if s.requested_sampling_ppm == 0 {
        "the program's default".to_string()
    } else {
        format!("{} ppm", s.requested_sampling_ppm)
    };
    let in_force = if s.sampling_ppm == s.requested_sampling_ppm {
        format!("sampling as requested ({requested})")
    } else {
        format!("sampling {} ppm (requested {requested})", s.sampling_ppm)
    };
    format!(
        "{node}: {measured} (budget {} %), {in_force}",
        s.max_cpu_percent
    )
}

fn list(nodes: &[String]) -> String {
    let mut out = nodes
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if nodes.len() > NAMED {
        out.push_str(&format!("; and {} more node(s)", nodes.len() - NAMED));
    }
    out
}

/// The condition `kind` with `status`, keeping the transition time of
/// `previous` when the status did not change.
fn condition(
    previous: &[Condition],
    on: bool,
    reason: &str,
    message: String,
    generation: i64,
    now: &Time,
) -> Condition {
    let status = if on { "True" } else { "False" };
    let since = previous
        .iter()
        .find(|c| c.type_ == BUDGET_ENFORCED && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: BUDGET_ENFORCED.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: truncate(&message, 1000),
        observed_generation: Some(generation),
        last_transition_time: since,
    }
}

/// The program's condition from what its nodes report (node, status);
/// None when none reports a budget.
pub fn program_condition(
    nodes: &[(&str, &CpuBudgetStatus)],
    previous: &[Condition],
    generation: i64,
    now: &Time,
) -> Option<Condition> {
    if nodes.is_empty() {
        return None;
    }
    let of = |want: &[State]| -> Vec<String> {
        nodes
            .iter()
            .filter(|(_, s)| want.contains(&state(s)))
            .map(|(n, s)| node_text(n, s))
            .collect()
    };
    let cannot = of(&[State::CannotSample]);
    let over = of(&[State::NotReducing, State::AtFloor]);
    let reduced = of(&[State::Reduced]);
    let mut parts = Vec::new();
    if !cannot.is_empty() {
        parts.push(format!(
            "over budget, the program does not declare sampling (BPFLEET_DECLARE_SAMPLING) so nothing was cut, on {}",
            list(&cannot)
        ));
    }
    if !over.is_empty() {
        parts.push(format!(
            "over budget, sampling not cut further, on {}",
            list(&over)
        ));
    }
    if !reduced.is_empty() {
        parts.push(format!("sampling reduced on {}", list(&reduced)));
    }
    let reason = if !cannot.is_empty() {
        "CannotSample"
    } else if !over.is_empty() {
        "OverBudget"
    } else if !reduced.is_empty() {
        "SamplingReduced"
    } else {
        let max = nodes
            .iter()
            .filter_map(|(_, s)| s.measured_cpu_percent)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let measured = nodes
            .iter()
            .filter(|(_, s)| s.measured_cpu_percent.is_some())
            .count();
        let message = match max {
            Some(max) => format!(
                "within budget ({} %) at the requested sampling on {} node(s); the most: {max:.2} % CPU ({measured} measured)",
                nodes[0].1.max_cpu_percent,
                nodes.len()
            ),
            None => format!(
                "budget {} % on {} node(s), not measured yet",
                nodes[0].1.max_cpu_percent,
                nodes.len()
            ),
        };
        return Some(condition(
            previous, false, "Within", message, generation, now,
        ));
    };
    Some(condition(
        previous,
        true,
        reason,
        parts.join("; "),
        generation,
        now,
    ))
}

/// The policy's condition from the conditions of the programs it applies
/// to (program, its `BudgetEnforced` if any); None when the policy sets
/// no CPU budget.
pub fn policy_condition(
    sets_budget: bool,
    programs: &[(&str, Option<&Condition>)],
    previous: &[Condition],
    generation: i64,
    now: &Time,
) -> Option<Condition> {
    if !sets_budget {
        return None;
    }
    let on: Vec<(&str, &Condition)> = programs
        .iter()
        .filter_map(|(p, c)| Some((*p, (*c)?)))
        .filter(|(_, c)| c.status == "True")
        .collect();
    if let Some((_, first)) = on.first() {
        // The most serious reason of any program.
        let reason = ["CannotSample", "OverBudget", "SamplingReduced"]
            .into_iter()
            .find(|r| on.iter().any(|(_, c)| c.reason == *r))
            .unwrap_or(first.reason.as_str());
        let message = on
            .iter()
            .map(|(p, c)| format!("{p}: {}", c.message))
            .collect::<Vec<_>>()
            .join(" | ");
        return Some(condition(previous, true, reason, message, generation, now));
    }
    let reporting = programs.iter().filter(|(_, c)| c.is_some()).count();
    let message = if reporting == 0 {
        "no node reports the budget yet".to_string()
    } else {
        format!(
            "within budget at the requested sampling: {reporting} of {} program(s) reporting",
            programs.len()
        )
    };
    Some(condition(
        previous, false, "Within", message, generation, now,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    fn st(state: State, measured: Option<f64>, requested: u64, in_force: u64) -> CpuBudgetStatus {
        CpuBudgetStatus {
            max_cpu_percent: 0.5,
            reduce_sampling: true,
            policy: "pol".into(),
            measured_cpu_percent: measured,
            requested_sampling_ppm: requested,
            sampling_ppm: in_force,
            state: state as i32,
            changed_at_unix_ms: 1,
            samples: true,
        }
    }

    #[test]
    fn reduced_nodes_are_named_with_figures() {
        let a = st(State::Reduced, Some(0.41), 0, 125_000);
        let b = st(State::Within, Some(0.1), 0, 0);
        let c = program_condition(&[("n1", &a), ("n2", &b)], &[], 3, &now()).unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "SamplingReduced")
        );
        assert_eq!(
            c.message,
            "sampling reduced on n1: 0.41 % CPU (budget 0.5 %), sampling 125000 ppm (requested the program's default)"
        );
        assert_eq!(c.observed_generation, Some(3));
    }

    #[test]
    fn cannot_sample_comes_first() {
        let a = st(State::Reduced, Some(0.41), 0, 125_000);
        let mut b = st(State::CannotSample, Some(9.0), 400_000, 400_000);
        b.samples = false;
        let c = program_condition(&[("n1", &a), ("n2", &b)], &[], 1, &now()).unwrap();
        assert_eq!(c.reason, "CannotSample");
        assert!(
            c.message
                .starts_with("over budget, the program does not declare sampling")
                && c.message
                    .contains("n2: 9.00 % CPU (budget 0.5 %), sampling as requested (400000 ppm)")
                && c.message.contains("sampling reduced on n1"),
            "{}",
            c.message
        );
        let d = st(State::AtFloor, Some(2.0), 0, 1000);
        let c = program_condition(&[("n3", &d)], &[], 1, &now()).unwrap();
        assert_eq!(c.reason, "OverBudget");
    }

    #[test]
    fn within_everywhere_is_false_and_no_report_is_no_condition() {
        let a = st(State::Within, Some(0.2), 0, 0);
        let b = st(State::Measuring, None, 0, 0);
        let c = program_condition(&[("n1", &a), ("n2", &b)], &[], 1, &now()).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Within"));
        assert!(
            c.message.contains("the most: 0.20 % CPU (1 measured)"),
            "{}",
            c.message
        );
        assert_eq!(program_condition(&[], &[], 1, &now()), None);
    }

    #[test]
    fn the_transition_time_stays_while_the_status_does() {
        let a = st(State::Reduced, Some(0.41), 0, 125_000);
        let first = program_condition(&[("n1", &a)], &[], 1, &now()).unwrap();
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_100).unwrap());
        let again =
            program_condition(&[("n1", &a)], std::slice::from_ref(&first), 1, &later).unwrap();
        assert_eq!(again.last_transition_time, first.last_transition_time);
        let b = st(State::Within, Some(0.1), 0, 0);
        let flipped = program_condition(&[("n1", &b)], &[first], 1, &later).unwrap();
        assert_eq!(flipped.last_transition_time, later);
    }

    #[test]
    fn the_policy_sums_its_programs_up() {
        let a = st(State::Reduced, Some(0.41), 0, 125_000);
        let on = program_condition(&[("n1", &a)], &[], 1, &now()).unwrap();
        let w = st(State::Within, Some(0.1), 0, 0);
        let off = program_condition(&[("n1", &w)], &[], 1, &now()).unwrap();
        let c = policy_condition(
            true,
            &[("p1", Some(&on)), ("p2", Some(&off)), ("p3", None)],
            &[],
            2,
            &now(),
        )
        .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "SamplingReduced")
        );
        assert!(
            c.message.starts_with("p1: sampling reduced on n1"),
            "{}",
            c.message
        );
        let c =
            policy_condition(true, &[("p2", Some(&off)), ("p3", None)], &[], 2, &now()).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "Within"));
        assert!(c.message.contains("1 of 2 program(s)"), "{}", c.message);
        assert_eq!(
            policy_condition(false, &[("p1", Some(&on))], &[], 2, &now()),
            None
        );
    }
}
