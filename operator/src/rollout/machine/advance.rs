//! Advancing through the plan: evaluates the current step, moves on while
//! steps are done, and applies the failure policy when one fails.

use bpfleet_api::program::{AnalysisVerdict, Phase, RevisionOutcome};

use super::{Machine, StepState};
use crate::rollout::analysis::{self, Subject, Verdict, stable_figures};
use crate::rollout::clock::{secs, time};
use crate::rollout::history;
use crate::rollout::nodes::waiting_for;
use crate::rollout::plan::{Kind, Step};
use crate::rollout::selection::canary_nodes;
use crate::rollout::{NodeFailure, SOURCE_UNAVAILABLE};

impl<'a> Machine<'a> {
    /// The nodes that should run the candidate while step `index` runs.
    /// Nodes left out of the rollout by verification do not count: the
    /// percentages are of the nodes that can run the candidate.
    pub(super) fn candidate_set(&self, index: usize) -> Vec<&'a str> {
        let percent = self.plan.placement(index).percent;
        let input: &'a super::Input<'a> = self.input;
        let excluded = match self.status.candidate_revision.as_deref() {
            Some(c) => self.excluded(c),
            None => Default::default(),
        };
        canary_nodes(
            input.program,
            input
                .nodes
                .iter()
                .map(|n| n.node.as_str())
                .filter(|n| !excluded.contains(*n)),
            percent,
        )
    }

    pub(super) fn advance(&mut self) {
        let Some(c) = self.status.candidate_revision.clone() else {
            return;
        };
        if self.failure_hold {
            if !self.promote {
                self.phase = Some(Phase::Aborted);
                self.message = self.input.status.message.clone();
                return;
            }
            self.promote = false;
            self.failure_hold = false;
            history::set_outcome(
                &mut self.status.history,
                &c,
                Some(RevisionOutcome::InProgress),
            );
            if self.verifying(&c) {
                self.override_verification(&c);
                self.event(
                    false,
                    "FailureOverridden",
                    format!(
                        "failed verification of revision {c} passed on request; the nodes that refused it are left out"
                    ),
                );
            } else {
                self.event(
                    false,
                    "FailureOverridden",
                    format!("failed step of revision {c} passed on request"),
                );
                self.next_step();
            }
        }
        if self.user_hold {
            if self.take_promote() {
                self.event(
                    true,
                    "RequestIgnored",
                    "promote ignored: the rollout is held by spec.paused or a pause request; resume first".into(),
                );
            }
            self.phase = Some(Phase::Paused);
            self.message = Some(if self.input.spec.paused {
                "held by spec.paused".into()
            } else {
                "held by a pause request".into()
            });
            return;
        }
        // While verifying, refusals are the verification's to judge, once
        // every node answered; nodes it left out count no more.
        let excluded = self.excluded(&c);
        let failed: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| !excluded.contains(&n.node))
            .filter_map(|n| n.failure(&c).map(|f| (n.node.as_str(), f)))
            .collect();
        let tolerated = usize::try_from(self.input.gates.max_program_failures.max(0)).unwrap_or(0);
        if !self.verifying(&c)
            && failed.len() > tolerated
            && let Some((node, f)) = failed.first()
        {
            let text = format!(
                "{} node(s) failed to load or attach it (maxProgramFailures {tolerated}), first {node}: {}: {}",
                failed.len(),
                f.reason,
                f.message
            );
            self.fail("ProgramLoadFailed", text);
            return;
        }
        if self.verifying(&c) {
            let state = self.eval_verify(&c);
            if !matches!(state, StepState::Done) {
                self.stop_at(state);
                return;
            }
        } else if self.verify.is_some() {
            let result = self
                .status
                .verification
                .as_ref()
                .filter(|v| v.revision == c)
                .map_or(super::verify::PASSED, |v| {
                    if v.result == super::verify::EXCLUDED {
                        super::verify::EXCLUDED
                    } else {
                        super::verify::PASSED
                    }
                });
            self.refresh_verification(&c, result);
        }
        // Each pass either returns or moves one step on: bounded by the plan.
        for _ in 0..=self.plan.len() {
            let index = self.step_index();
            let state = if index >= self.plan.len() {
                let everyone = self.candidate_set(index);
                let waiting = waiting_for(&c, &everyone, &self.nodes, false);
                if waiting.is_empty() {
                    self.complete(&c);
                    return;
                }
                self.wait_on_nodes(
                    &c,
                    &waiting,
                    format!(
                        "{} of {} nodes on revision {c}",
                        everyone.len() - waiting.len(),
                        everyone.len()
                    ),
                )
            } else {
                self.eval_step(index, &c)
            };
            if matches!(state, StepState::Done) {
                self.next_step();
            } else {
                self.stop_at(state);
                return;
            }
        }
    }

    /// The rollout stops this call at a step that waits or failed.
    fn stop_at(&mut self, state: StepState) {
        match state {
            StepState::Done => {}
            StepState::Wait {
                phase,
                message,
                next_in,
            } => {
                self.phase = Some(phase);
                self.message = Some(message);
                if let Some(n) = next_in {
                    self.want_again(n);
                }
            }
            StepState::Failed { reason, message } => self.fail(reason, message),
        }
    }

    fn eval_step(&mut self, index: usize, c: &str) -> StepState {
        let started = self
            .progress
            .step_started_at
            .as_ref()
            .map_or(self.now, secs);
        let step = self.plan.steps[index].clone();
        match step {
            Step::SetPercent(_) | Step::ActivateAll => {
                let set = self.candidate_set(index);
                let waiting = waiting_for(c, &set, &self.nodes, false);
                if waiting.is_empty() {
                    StepState::Done
                } else {
                    let text = format!(
                        "{} of {} nodes on revision {c}",
                        set.len() - waiting.len(),
                        set.len()
                    );
                    self.wait_on_nodes(c, &waiting, text)
                }
            }
            Step::Preview => {
                let waiting = waiting_for(c, &[], &self.nodes, true);
                if waiting.is_empty() {
                    StepState::Done
                } else {
                    let total = self.nodes.len();
                    let text = format!(
                        "preview: revision {c} loaded on {} of {total} nodes",
                        total - waiting.len()
                    );
                    self.wait_on_nodes(c, &waiting, text)
                }
            }
            Step::Pause(duration) => match duration {
                _ if self.take_promote() => StepState::Done,
                Some(d) if self.now >= started + d => StepState::Done,
                Some(d) => StepState::Wait {
                    phase: Phase::Paused,
                    message: format!("pausing {d}s, {}s left", started + d - self.now),
                    next_in: Some(started + d - self.now),
                },
                None => StepState::Wait {
                    phase: Phase::Paused,
                    message: "paused until promoted".into(),
                    next_in: None,
                },
            },
            Step::AwaitPromotion { auto, after } => {
                if self.take_promote() || (auto && self.now >= started + after) {
                    StepState::Done
                } else if auto {
                    StepState::Wait {
                        phase: Phase::Paused,
                        message: format!(
                            "preview ready; auto promotion in {}s",
                            started + after - self.now
                        ),
                        next_in: Some(started + after - self.now),
                    }
                } else {
                    StepState::Wait {
                        phase: Phase::Paused,
                        message: "preview ready; waiting for promote".into(),
                        next_in: None,
                    }
                }
            }
            Step::Analysis(a) => {
                let was_inconclusive = self.inconclusive(c);
                let subject = Subject {
                    candidate: c,
                    stable: self.status.stable_revision.as_deref(),
                    nodes: &self.nodes,
                    gates: self.input.gates,
                    now: self.now,
                    started,
                };
                let mut last = self.status.last_analysis.take();
                let verdict = analysis::run(&a, &subject, &mut self.progress, &mut last);
                self.status.last_analysis = last;
                match verdict {
                    Verdict::Running { next_in } => StepState::Wait {
                        phase: Phase::Progressing,
                        message: format!(
                            "analysis: {} of {} measurements",
                            self.progress.measurements,
                            a.measurements()
                        ),
                        next_in: Some(next_in),
                    },
                    Verdict::Passed => {
                        self.event(
                            false,
                            "AnalysisPassed",
                            format!("analysis of revision {c} passed"),
                        );
                        StepState::Done
                    }
                    Verdict::Failed(text) => StepState::Failed {
                        reason: "AnalysisFailed",
                        message: format!("analysis failed: {text}"),
                    },
                    Verdict::Inconclusive(_) if self.take_promote() => StepState::Done,
                    Verdict::Inconclusive(text) => {
                        if !was_inconclusive {
                            self.event(
                                true,
                                "AnalysisInconclusive",
                                format!("analysis of revision {c} inconclusive: {text}"),
                            );
                        }
                        StepState::Wait {
                            phase: Phase::Paused,
                            message: format!(
                                "analysis inconclusive ({text}); promote, retry or abort"
                            ),
                            next_in: None,
                        }
                    }
                }
            }
        }
    }

    /// The last analysis of `c` ended inconclusive.
    pub(super) fn inconclusive(&self, c: &str) -> bool {
        self.status
            .last_analysis
            .as_ref()
            .is_some_and(|a| a.revision == c && a.verdict == AnalysisVerdict::Inconclusive)
    }

    fn take_promote(&mut self) -> bool {
        std::mem::take(&mut self.promote)
    }

    /// Waiting for nodes: the only time the progress deadline runs.
    pub(super) fn wait_on_nodes(&mut self, c: &str, waiting: &[String], text: String) -> StepState {
        let on_candidate = self.nodes.iter().filter(|n| n.active() == Some(c)).count();
        let before = if self.status.current_revision.as_deref() == Some(c) {
            usize::try_from(self.status.nodes.updated.max(0)).unwrap_or(0)
        } else {
            0
        };
        if on_candidate > before {
            self.progress.progress_at = Some(time(self.now));
        }
        let since = self.progress.progress_at.as_ref().map_or(self.now, secs);
        let deadline = i64::from(self.input.spec.progress_deadline_seconds.max(1));
        let fetching = self.fetching(c, waiting);
        if self.now - since > deadline {
            let mut names: Vec<&str> = waiting.iter().take(5).map(String::as_str).collect();
            if waiting.len() > 5 {
                names.push("...");
            }
            return StepState::Failed {
                reason: "ProgressDeadlineExceeded",
                message: format!(
                    "no progress for {}s (progressDeadlineSeconds {deadline}), waiting for {}{fetching}",
                    self.now - since,
                    names.join(", ")
                ),
            };
        }
        StepState::Wait {
            phase: Phase::Progressing,
            message: format!("{text}{fetching}"),
            next_in: Some(since + deadline + 1 - self.now),
        }
    }

    /// What the `waiting` nodes that could not fetch the source of `c` say
    /// (empty when none): how many, and the first one's answer.
    fn fetching(&self, c: &str, waiting: &[String]) -> String {
        let failures: Vec<(&str, &NodeFailure)> = self
            .nodes
            .iter()
            .filter(|n| waiting.contains(&n.node))
            .filter_map(|n| n.unavailable(c).map(|f| (n.node.as_str(), f)))
            .collect();
        match failures.first() {
            None => String::new(),
            Some((node, f)) => format!(
                "; {} node(s) cannot fetch its source ({SOURCE_UNAVAILABLE}, retried with backoff), first {node}: {}",
                failures.len(),
                f.message
            ),
        }
    }

    pub(super) fn next_step(&mut self) {
        let done = self.step_index();
        let next = done + 1;
        self.status.current_step_index = Some(i32::try_from(next).unwrap_or(i32::MAX));
        self.restart_clocks();
        let total = self.plan.len();
        let c = self.status.candidate_revision.clone().unwrap_or_default();
        self.event(
            false,
            "StepAdvanced",
            format!("revision {c}: step {}/{total} done", next.min(total)),
        );
        if matches!(self.plan.kind, Kind::BlueGreen { .. })
            && matches!(self.plan.steps.get(next), Some(Step::ActivateAll))
        {
            let stable = stable_figures(self.status.stable_revision.as_deref(), &self.nodes);
            let min = u64::try_from(self.input.gates.min_samples.max(1)).unwrap_or(1);
            let enough = stable.requests >= min;
            self.progress.baseline_error_rate = stable.error_rate().filter(|_| enough);
            self.progress.baseline_p99_ms = stable.p99_ms.filter(|_| enough);
            self.progress.baseline_ns_per_run = stable.ns_per_run().filter(|_| stable.runs >= min);
        }
    }

    fn complete(&mut self, c: &str) {
        let old = self.status.stable_revision.replace(c.to_string());
        self.status.candidate_revision = None;
        history::set_outcome(&mut self.status.history, c, Some(RevisionOutcome::Promoted));
        self.status.current_step_index = Some(i32::try_from(self.plan.len()).unwrap_or(i32::MAX));
        self.progress.measurements = 0;
        self.progress.consecutive_failures = 0;
        self.progress.baseline_error_rate = None;
        self.progress.baseline_p99_ms = None;
        self.progress.baseline_ns_per_run = None;
        let mut text = format!("revision {c} is stable on {} nodes", self.nodes.len());
        if let (Kind::BlueGreen { keep_previous }, Some(o)) = (self.plan.kind, old)
            && keep_previous > 0
            && o != c
        {
            self.progress.retained_revision = Some(o.clone());
            self.progress.retained_until = Some(time(self.now + keep_previous));
            self.want_again(keep_previous);
            text.push_str(&format!(
                "; previous revision {o} stays loaded for {keep_previous}s"
            ));
        }
        self.event(false, "RolloutCompleted", text);
    }
}
