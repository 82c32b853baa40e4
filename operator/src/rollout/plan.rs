//! A strategy as a flat list of steps, so that canary, blue-green and
//! immediate advance through one machine and `currentStep` reads `i/n` for
//! all three.
//!
//! - immediate: `[ActivateAll]`.
//! - canary: the user's steps, plus a final `SetPercent(100)` when the last
//!   percentage in effect is below 100 (a canary ends with every node on the
//!   new revision).
//! - blueGreen: `[Preview, Analysis(pre)?, AwaitPromotion, ActivateAll,
//!   Analysis(post)?]`; once done the previous revision stays loaded for
//!   `keepPreviousSeconds`.

use bpfleet_api::program::{AnalysisStep, Strategy};

use super::clock::parse_duration;
use crate::{Error, Result};

/// One step of a rollout.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// This share of the selected nodes runs the candidate, the rest stable;
    /// at most `maxUnavailable` nodes switch at once.
    SetPercent(i32),
    /// Wait this many seconds, or until promoted when `None`.
    Pause(Option<i64>),
    /// Health analysis of the candidate.
    Analysis(Analysis),
    /// Blue-green: candidate loaded, inactive, on every node.
    Preview,
    /// Blue-green: wait for a promote, or auto promotion after `after` seconds.
    AwaitPromotion { auto: bool, after: i64 },
    /// Every node runs the candidate, switched all at once.
    ActivateAll,
}

/// An analysis window.
#[derive(Clone, Debug, PartialEq)]
pub struct Analysis {
    pub duration: i64,
    pub interval: i64,
    /// False while the candidate is loaded but inactive (no traffic gates).
    pub traffic: bool,
    /// Compare with the stable figures recorded before the switch instead of
    /// live stable nodes (blue-green post-promotion: no stable node is left).
    pub recorded_baseline: bool,
}

impl Analysis {
    fn from_step(step: &AnalysisStep, traffic: bool, recorded_baseline: bool) -> Self {
        let duration = i64::from(step.duration_seconds.max(1));
        Analysis {
            duration,
            interval: i64::from(step.interval_seconds.max(1)).min(duration),
            traffic,
            recorded_baseline,
        }
    }

    /// Measurements in the window (at least one).
    pub fn measurements(&self) -> i32 {
        i32::try_from((self.duration / self.interval).max(1)).unwrap_or(i32::MAX)
    }
}

/// Which strategy a plan came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Immediate,
    Canary { max_unavailable: usize },
    BlueGreen { keep_previous: i64 },
}

/// The steps of a strategy.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub kind: Kind,
    pub steps: Vec<Step>,
}

impl Plan {
    /// Builds the plan; fails on a strategy the CRD schema should have refused.
    pub fn new(strategy: &Strategy) -> Result<Plan> {
        match (&strategy.immediate, &strategy.canary, &strategy.blue_green) {
            (Some(_), None, None) => Ok(Plan {
                kind: Kind::Immediate,
                steps: vec![Step::ActivateAll],
            }),
            (None, Some(canary), None) => {
                let mut steps = Vec::with_capacity(canary.steps.len() + 1);
                let mut percent = 0;
                for (i, s) in canary.steps.iter().enumerate() {
                    let step = match (&s.set_node_percent, &s.pause, &s.analysis) {
                        (Some(p), None, None) => {
                            percent = percent.max((*p).clamp(0, 100));
                            Step::SetPercent(percent)
                        }
                        (None, Some(pause), None) => {
                            Step::Pause(pause.duration.as_deref().map(parse_duration).transpose()?)
                        }
                        (None, None, Some(a)) => {
                            Step::Analysis(Analysis::from_step(a, true, false))
                        }
                        _ => return Err(Error::InvalidStep(i)),
                    };
                    steps.push(step);
                }
                if percent < 100 {
                    steps.push(Step::SetPercent(100));
                }
                Ok(Plan {
                    kind: Kind::Canary {
                        max_unavailable: usize::try_from(canary.max_unavailable.max(1))
                            .unwrap_or(1),
                    },
                    steps,
                })
            }
            (None, None, Some(bg)) => {
                let mut steps = vec![Step::Preview];
                if let Some(a) = &bg.pre_promotion_analysis {
                    steps.push(Step::Analysis(Analysis::from_step(a, false, false)));
                }
                steps.push(Step::AwaitPromotion {
                    auto: bg.auto_promotion_enabled,
                    after: i64::from(bg.auto_promotion_seconds.unwrap_or(0).max(0)),
                });
                steps.push(Step::ActivateAll);
                if let Some(a) = &bg.post_promotion_analysis {
                    steps.push(Step::Analysis(Analysis::from_step(a, true, true)));
                }
                Ok(Plan {
                    kind: Kind::BlueGreen {
                        keep_previous: i64::from(bg.keep_previous_seconds.max(0)),
                    },
                    steps,
                })
            }
            _ => Err(Error::InvalidStrategy),
        }
    }

    /// Number of steps (the `n` of `currentStep`).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether the plan has no step (never: every strategy has at least one).
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Where nodes should be while step `index` is in progress (steps before
    /// it are done); `index == len()` means every step is done.
    pub fn placement(&self, index: usize) -> Placement {
        let mut p = Placement::default();
        for step in self.steps.iter().take(index.saturating_add(1)) {
            match step {
                Step::SetPercent(n) => p.percent = p.percent.max(*n),
                Step::Preview => p.preload_all = true,
                Step::ActivateAll => {
                    p.percent = 100;
                    p.all_at_once = true;
                }
                Step::Pause(_) | Step::Analysis(_) | Step::AwaitPromotion { .. } => {}
            }
        }
        p
    }
}

/// Where the candidate should run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Share of selected nodes with the candidate active.
    pub percent: i32,
    /// Candidate loaded (inactive) on every node.
    pub preload_all: bool,
    /// Switch every node at once, ignoring `maxUnavailable`.
    pub all_at_once: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::testing::{
        analysis, blue_green, canary, immediate, none, pause, pause_for, percent,
    };

    #[test]
    fn immediate_is_one_step() {
        let plan = Plan::new(&immediate()).expect("plan");
        assert_eq!(plan.steps, vec![Step::ActivateAll]);
        assert_eq!(plan.placement(0).percent, 100);
        assert!(plan.placement(0).all_at_once);
    }

    #[test]
    fn canary_gets_a_final_full_step_and_percent_carries() {
        let plan = Plan::new(&canary(vec![
            percent(20),
            pause_for("1m"),
            percent(50),
            analysis(60, 10),
        ]))
        .expect("plan");
        assert_eq!(plan.len(), 5);
        assert_eq!(plan.steps[1], Step::Pause(Some(60)));
        assert_eq!(plan.steps[4], Step::SetPercent(100));
        assert_eq!(plan.placement(0).percent, 20);
        assert_eq!(plan.placement(1).percent, 20);
        assert_eq!(plan.placement(3).percent, 50);
        assert_eq!(plan.placement(4).percent, 100);
        assert!(!plan.placement(4).all_at_once);
    }

    #[test]
    fn canary_ending_at_100_is_not_extended() {
        let plan = Plan::new(&canary(vec![percent(100), pause()])).expect("plan");
        assert_eq!(plan.len(), 2);
    }

    #[test]
    fn blue_green_stages() {
        let plan = Plan::new(&blue_green(true, Some(30), true, true, 300)).expect("plan");
        assert_eq!(plan.len(), 5);
        assert_eq!(plan.steps[0], Step::Preview);
        assert!(matches!(&plan.steps[1], Step::Analysis(a) if !a.traffic));
        assert_eq!(
            plan.steps[2],
            Step::AwaitPromotion {
                auto: true,
                after: 30
            }
        );
        assert!(matches!(&plan.steps[4], Step::Analysis(a) if a.traffic && a.recorded_baseline));
        assert!(plan.placement(0).preload_all);
        assert_eq!(plan.placement(2).percent, 0);
        assert_eq!(plan.placement(3).percent, 100);
        assert_eq!(plan.kind, Kind::BlueGreen { keep_previous: 300 });
    }

    #[test]
    fn bad_strategies_are_errors() {
        assert!(matches!(Plan::new(&none()), Err(Error::InvalidStrategy)));
        let mut both = immediate();
        both.canary = canary(vec![percent(10)]).canary;
        assert!(matches!(Plan::new(&both), Err(Error::InvalidStrategy)));
        let mut empty_step = percent(10);
        empty_step.set_node_percent = None;
        assert!(matches!(
            Plan::new(&canary(vec![empty_step])),
            Err(Error::InvalidStep(0))
        ));
        assert!(matches!(
            Plan::new(&canary(vec![pause_for("10 minutes")])),
            Err(Error::InvalidDuration(_))
        ));
    }

    #[test]
    fn analysis_window_counts_measurements() {
        let a = Analysis::from_step(
            &AnalysisStep {
                duration_seconds: 60,
                interval_seconds: 10,
                policy_ref: None,
            },
            true,
            false,
        );
        assert_eq!(a.measurements(), 6);
    }
}
