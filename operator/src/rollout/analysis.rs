//! Analysis windows: one measurement per `intervalSeconds` from the start of
//! the step, `durationSeconds / intervalSeconds` measurements in all.
//!
//! A measurement compares the candidate nodes (those with the candidate
//! active, or merely loaded during a blue-green preview) against the stable
//! baseline on the health gates. A failed measurement adds to a streak; the
//! analysis fails when the streak reaches `consecutiveFailureLimit`, or when
//! the last measurement of the window fails. Missing data never passes: with
//! `noData: Fail` it counts as a failed measurement, with `Inconclusive` it
//! leaves the streak alone and, if the window ends on it, the analysis is
//! inconclusive and the rollout waits for a person (promote, retry, abort).
//! An operator that was down for several intervals takes one measurement on
//! its return, not a burst of identical ones. The ratio gates are left out
//! when the candidate serves no traffic (blue-green preview) and on a first
//! rollout, which has no stable revision to compare with; the node-health
//! gates (the worst candidate node's softirq, system CPU, agent CPU and
//! memory) are left out in a preview only.

use bpfleet_api::policy::{HealthGates, NoDataPolicy};
use bpfleet_api::program::{AnalysisResult, AnalysisVerdict, RolloutProgress};

use super::NodeReport;
use super::clock::time;
use super::plan::Analysis;
use crate::gates::{self, Baseline, GroupFigures, Measurement, NO_DATA, Outcome};

/// Where an analysis window stands after this call.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// More measurements to come; look again in this many seconds.
    Running {
        next_in: i64,
    },
    Passed,
    /// Failed, with the gates and figures that failed.
    Failed(String),
    /// Window over without enough data.
    Inconclusive(String),
}

/// What a measurement needs besides the window.
pub struct Subject<'a> {
    pub candidate: &'a str,
    pub stable: Option<&'a str>,
    pub nodes: &'a [NodeReport],
    pub gates: &'a HealthGates,
    pub now: i64,
    pub started: i64,
}

/// Advances the window of `a`, updating counters in `progress` and the
/// result in `last`.
pub fn run(
    a: &Analysis,
    s: &Subject<'_>,
    progress: &mut RolloutProgress,
    last: &mut Option<AnalysisResult>,
) -> Verdict {
    let total = a.measurements();
    let elapsed = (s.now - s.started).max(0);
    let due = i32::try_from(elapsed / a.interval)
        .unwrap_or(i32::MAX)
        .min(total);
    if due <= progress.measurements {
        if progress.measurements >= total {
            // The window ended earlier without a verdict that moved on.
            let text = last
                .as_ref()
                .map(|r| describe_no_data(&r.gates))
                .unwrap_or_default();
            return Verdict::Inconclusive(text);
        }
        let next = s.started + i64::from(progress.measurements + 1) * a.interval;
        return Verdict::Running {
            next_in: (next - s.now).max(1),
        };
    }

    let m = measure(a, s, progress);
    progress.measurements = due;
    match m.outcome {
        Outcome::Pass => progress.consecutive_failures = 0,
        Outcome::Fail => progress.consecutive_failures += 1,
        Outcome::NoData if s.gates.no_data == NoDataPolicy::Fail => {
            progress.consecutive_failures += 1
        }
        Outcome::NoData => {}
    }
    let limit = s.gates.consecutive_failure_limit.max(1);
    let finished = progress.measurements >= total;
    let counts_as_failure = m.outcome == Outcome::Fail
        || (m.outcome == Outcome::NoData && s.gates.no_data == NoDataPolicy::Fail);
    let failure = progress.consecutive_failures >= limit || (finished && counts_as_failure);
    let (verdict, result) = if failure {
        let text = if m.outcome == Outcome::Fail {
            m.failed_summary()
        } else {
            format!("no data (noData: Fail): {}", describe_no_data(&m.gates))
        };
        (AnalysisVerdict::Failed, Verdict::Failed(text))
    } else if finished && m.outcome == Outcome::Pass {
        (AnalysisVerdict::Passed, Verdict::Passed)
    } else if finished {
        (
            AnalysisVerdict::Inconclusive,
            Verdict::Inconclusive(describe_no_data(&m.gates)),
        )
    } else {
        let next = s.started + i64::from(progress.measurements + 1) * a.interval;
        (
            AnalysisVerdict::Running,
            Verdict::Running {
                next_in: (next - s.now).max(1),
            },
        )
    };
    *last = Some(AnalysisResult {
        revision: s.candidate.to_string(),
        verdict,
        gates: m.gates,
        finished_at: (verdict != AnalysisVerdict::Running).then(|| time(s.now)),
    });
    result
}

fn measure(a: &Analysis, s: &Subject<'_>, progress: &RolloutProgress) -> Measurement {
    let on_candidate = |n: &&NodeReport| {
        n.reachable
            && if a.traffic {
                n.active() == Some(s.candidate)
            } else {
                n.has(s.candidate)
            }
    };
    let load_failures = s
        .nodes
        .iter()
        .filter(|n| n.failure(s.candidate).is_some())
        .count() as u64;
    let candidate = GroupFigures::from_nodes(
        s.nodes
            .iter()
            .filter(on_candidate)
            .filter_map(|n| Some((n.node.as_str(), n.sample(s.candidate)?))),
        load_failures,
    );
    let baseline = if a.recorded_baseline {
        Baseline {
            requests: None,
            error_rate: progress.baseline_error_rate,
            p99_ms: progress.baseline_p99_ms,
            runs: None,
            ns_per_run: progress.baseline_ns_per_run,
        }
    } else {
        Baseline::from_group(&stable_figures(s.stable, s.nodes))
    };
    // With no stable revision at all (first rollout) there is nothing to
    // compare with: the ratio gates do not apply, the absolute ones still do
    // (the node-health ones once the candidate runs: not in a preview).
    let compare = a.traffic && s.stable.is_some();
    gates::evaluate_on(s.gates, &candidate, &baseline, a.traffic, compare)
}

/// Figures of the nodes running `stable` active.
pub fn stable_figures(stable: Option<&str>, nodes: &[NodeReport]) -> GroupFigures {
    let Some(stable) = stable else {
        return GroupFigures::default();
    };
    GroupFigures::from_samples(
        nodes
            .iter()
            .filter(|n| n.reachable && n.active() == Some(stable))
            .filter_map(|n| n.sample(stable)),
        0,
    )
}

fn describe_no_data(gates: &[bpfleet_api::program::GateResult]) -> String {
    let parts: Vec<String> = gates
        .iter()
        .filter(|g| g.message.as_deref() == Some(NO_DATA))
        .map(|g| format!("{}: {}", g.gate, g.measured))
        .collect();
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gates::HealthSample;
    use crate::rollout::LoadedRevision;

    fn node(name: &str, revision: &str, errors: u64, requests: u64) -> NodeReport {
        NodeReport {
            node: name.into(),
            reachable: true,
            revisions: vec![LoadedRevision {
                revision: revision.into(),
                active: true,
                health: Some(HealthSample {
                    http_requests: requests,
                    http_errors: errors,
                    p99_latency_ms: Some(10.0),
                    ..Default::default()
                }),
            }],
            failures: vec![],
            kernel: None,
            btf: None,
            map_memory_bytes: None,
        }
    }

    fn window() -> Analysis {
        Analysis {
            duration: 40,
            interval: 10,
            traffic: true,
            recorded_baseline: false,
        }
    }

    /// Runs one call at `now` with the candidate node serving `errors`/1000.
    fn call(
        gates: &HealthGates,
        now: i64,
        errors: u64,
        progress: &mut RolloutProgress,
        last: &mut Option<AnalysisResult>,
    ) -> Verdict {
        let nodes = [node("a", "c", errors, 1000), node("b", "s", 10, 1000)];
        let subject = Subject {
            candidate: "c",
            stable: Some("s"),
            nodes: &nodes,
            gates,
            now,
            started: 100,
        };
        run(&window(), &subject, progress, last)
    }

    #[test]
    fn a_transient_failure_below_the_limit_recovers() {
        let gates = HealthGates {
            consecutive_failure_limit: 2,
            ..Default::default()
        };
        let (mut p, mut last) = (RolloutProgress::default(), None);
        assert_eq!(
            call(&gates, 105, 10, &mut p, &mut last),
            Verdict::Running { next_in: 5 }
        );
        assert_eq!(p.measurements, 0, "nothing due before the first interval");
        assert!(matches!(
            call(&gates, 110, 50, &mut p, &mut last),
            Verdict::Running { .. }
        ));
        assert_eq!(p.consecutive_failures, 1);
        assert_eq!(
            last.as_ref().map(|l| l.verdict),
            Some(AnalysisVerdict::Running)
        );
        assert!(matches!(
            call(&gates, 120, 10, &mut p, &mut last),
            Verdict::Running { .. }
        ));
        assert_eq!(p.consecutive_failures, 0);
        assert!(matches!(
            call(&gates, 130, 10, &mut p, &mut last),
            Verdict::Running { .. }
        ));
        assert_eq!(call(&gates, 140, 10, &mut p, &mut last), Verdict::Passed);
        assert_eq!(
            last.as_ref().map(|l| l.verdict),
            Some(AnalysisVerdict::Passed)
        );
    }

    #[test]
    fn the_limit_in_a_row_fails_before_the_window_ends() {
        let gates = HealthGates {
            consecutive_failure_limit: 2,
            ..Default::default()
        };
        let (mut p, mut last) = (RolloutProgress::default(), None);
        call(&gates, 110, 50, &mut p, &mut last);
        let v = call(&gates, 120, 50, &mut p, &mut last);
        assert!(
            matches!(&v, Verdict::Failed(t) if t.contains("errorRate")),
            "{v:?}"
        );
        let result = last.expect("result");
        assert_eq!(result.verdict, AnalysisVerdict::Failed);
        assert!(result.finished_at.is_some());
    }

    #[test]
    fn the_last_measurement_failing_fails_the_window() {
        let gates = HealthGates {
            consecutive_failure_limit: 5,
            ..Default::default()
        };
        let (mut p, mut last) = (RolloutProgress::default(), None);
        for now in [110, 120, 130] {
            call(&gates, now, 10, &mut p, &mut last);
        }
        assert!(matches!(
            call(&gates, 140, 50, &mut p, &mut last),
            Verdict::Failed(_)
        ));
    }

    #[test]
    fn a_late_operator_takes_one_measurement_not_a_burst() {
        let gates = HealthGates::default();
        let (mut p, mut last) = (RolloutProgress::default(), None);
        assert!(matches!(
            call(&gates, 135, 10, &mut p, &mut last),
            Verdict::Running { next_in: 5 }
        ));
        assert_eq!(p.measurements, 3);
        assert_eq!(call(&gates, 140, 10, &mut p, &mut last), Verdict::Passed);
    }

    #[test]
    fn no_stable_revision_leaves_ratio_gates_out() {
        let gates = HealthGates::default();
        let nodes = [node("a", "c", 900, 1000)];
        let subject = Subject {
            candidate: "c",
            stable: None,
            nodes: &nodes,
            gates: &gates,
            now: 200,
            started: 100,
        };
        let (mut p, mut last) = (RolloutProgress::default(), None);
        assert_eq!(run(&window(), &subject, &mut p, &mut last), Verdict::Passed);
        let names: Vec<String> = last
            .expect("result")
            .gates
            .into_iter()
            .map(|g| g.gate)
            .collect();
        assert_eq!(names, ["programFailures"]);
    }
}
