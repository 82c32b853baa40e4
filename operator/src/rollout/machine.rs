//! The machine proper: manual commands, holds, choosing the candidate,
//! advancing through the plan, failure policy, and the assembled status.
//!
//! One call runs as many steps as the input allows (a zero-length pause or
//! an already converged step does not cost a reconcile), and stops at the
//! first step that must wait. The progress deadline only runs while the
//! rollout waits for nodes: it counts from the last progress (step advanced
//! or one more node on the candidate), and time held by `spec.paused` or a
//! pause request is added back on resume, so paused time never counts.
//! Pause steps, promotion waits and analysis windows have their own clocks.

use bpfleet_api::TracerProgramStatus;
use bpfleet_api::program::{FailurePolicy, Phase, RevisionOutcome, RolloutProgress, VerifyFirst};

use super::clock::{secs, time};
use super::history;
use super::nodes;
use super::plan::{Kind, Plan};
use super::{CommandKind, Event, Input, NodeReport, Output};
use crate::Result;
use crate::revision::revision_id;

/// Most manual request ids remembered in status.
const ACK_LIMIT: usize = 16;

/// Computes the next status, node actions and events (see the module docs).
pub fn reconcile(input: &Input<'_>) -> Result<Output> {
    let mut m = Machine::new(input)?;
    m.clock_went_back();
    m.commands();
    m.hold();
    m.choose_candidate();
    m.drop_stale_failures();
    m.retention();
    m.advance();
    Ok(m.finish())
}

enum StepState {
    Done,
    Wait {
        phase: Phase,
        message: String,
        next_in: Option<i64>,
    },
    Failed {
        reason: &'static str,
        message: String,
    },
}

struct Machine<'a> {
    input: &'a Input<'a>,
    now: i64,
    revision: String,
    plan: Plan,
    /// `strategy.verifyFirst` when verification is on.
    verify: Option<VerifyFirst>,
    status: TracerProgramStatus,
    progress: RolloutProgress,
    events: Vec<Event>,
    /// A promote command arrived this call and was not used yet.
    promote: bool,
    /// The reports, without failures older than the revision's latest
    /// deployment (see [`nodes::without_stale_failures`]).
    nodes: Vec<NodeReport>,
    /// Held by `failurePolicy: Pause` after a failure.
    failure_hold: bool,
    /// Held by `spec.paused` or a pause request.
    user_hold: bool,
    phase: Option<Phase>,
    message: Option<String>,
    stall_reason: Option<String>,
    next_in: Option<i64>,
}

impl<'a> Machine<'a> {
    fn new(input: &'a Input<'a>) -> Result<Self> {
        let status = input.status.clone();
        let failure_hold =
            status.phase == Some(Phase::Aborted) && status.candidate_revision.is_some();
        Ok(Machine {
            now: secs(&input.now),
            revision: revision_id(input.spec)?,
            plan: Plan::new(&input.spec.strategy)?,
            verify: input
                .spec
                .strategy
                .verifies_first()
                .then(|| input.spec.strategy.verify_first.clone().unwrap_or_default()),
            progress: status.rollout.clone().unwrap_or_default(),
            status,
            input,
            events: Vec::new(),
            promote: false,
            nodes: input.nodes.to_vec(),
            failure_hold,
            user_hold: input.spec.paused || input.requests.pause,
            phase: None,
            message: None,
            stall_reason: None,
            next_in: None,
        })
    }

    fn drop_stale_failures(&mut self) {
        let history = &self.status.history;
        self.nodes = nodes::without_stale_failures(self.input.nodes, |r| {
            history::deployed_at(history, r).as_ref().map(secs)
        });
    }

    fn event(&mut self, warning: bool, reason: &str, message: String) {
        self.events.push(Event {
            warning,
            reason: reason.to_string(),
            message,
        });
    }

    fn step_index(&self) -> usize {
        usize::try_from(self.status.current_step_index.unwrap_or(0).max(0)).unwrap_or(0)
    }

    fn restart_clocks(&mut self) {
        self.progress.step_started_at = Some(time(self.now));
        self.progress.progress_at = Some(time(self.now));
        self.progress.measurements = 0;
        self.progress.consecutive_failures = 0;
    }

    /// Manual commands not seen before, in order.
    fn commands(&mut self) {
        for cmd in &self.input.requests.commands {
            if self.progress.acknowledged_requests.contains(&cmd.id) {
                continue;
            }
            self.progress.acknowledged_requests.push(cmd.id.clone());
            let excess = self
                .progress
                .acknowledged_requests
                .len()
                .saturating_sub(ACK_LIMIT);
            self.progress.acknowledged_requests.drain(..excess);
            let candidate = self.status.candidate_revision.clone();
            match (&cmd.kind, candidate) {
                (CommandKind::Promote, Some(c)) => {
                    self.promote = true;
                    self.event(
                        false,
                        "PromoteRequested",
                        format!("promote of revision {c} requested"),
                    );
                }
                (CommandKind::Abort, Some(_)) => {
                    self.abort("AbortRequested", "rollout aborted on request".into());
                }
                (CommandKind::Retry, Some(c)) if self.failure_hold || self.inconclusive(&c) => {
                    self.failure_hold = false;
                    self.restart_clocks();
                    history::touch(&mut self.status.history, &c, time(self.now));
                    self.status.last_analysis = None;
                    history::set_outcome(
                        &mut self.status.history,
                        &c,
                        Some(RevisionOutcome::InProgress),
                    );
                    self.event(
                        false,
                        "RetryRequested",
                        format!("rerunning step {} of revision {c}", self.step_index() + 1),
                    );
                }
                (CommandKind::Retry, None) if self.blocked() => {
                    let rev = self.revision.clone();
                    history::set_outcome(&mut self.status.history, &rev, None);
                    self.event(
                        false,
                        "RetryRequested",
                        format!("rolling out revision {rev} again"),
                    );
                }
                (CommandKind::Undo { revision }, _) => self.undo(revision),
                (kind, _) => {
                    let what = match kind {
                        CommandKind::Promote => "promote",
                        CommandKind::Abort => "abort",
                        CommandKind::Retry => "retry",
                        CommandKind::Undo { .. } => "undo",
                    };
                    self.event(
                        true,
                        "RequestIgnored",
                        format!("{what} ignored: nothing to {what} ({})", cmd.id),
                    );
                }
            }
        }
    }

    fn undo(&mut self, target: &str) {
        if !history::contains(&self.status.history, target) {
            self.event(
                true,
                "UndoRejected",
                format!("revision {target} is not in the version registry"),
            );
            return;
        }
        if let Some(c) = self.status.candidate_revision.take()
            && c != target
        {
            history::set_outcome(
                &mut self.status.history,
                &c,
                Some(RevisionOutcome::RolledBack),
            );
        }
        let current = self.revision.clone();
        let outcome = if current == target {
            Some(RevisionOutcome::Promoted)
        } else {
            Some(RevisionOutcome::RolledBack)
        };
        history::set_outcome(&mut self.status.history, &current, outcome);
        history::set_outcome(
            &mut self.status.history,
            target,
            Some(RevisionOutcome::Promoted),
        );
        self.status.stable_revision = Some(target.to_string());
        self.progress.retained_revision = None;
        self.progress.retained_until = None;
        self.failure_hold = false;
        let held = if current == target {
            String::new()
        } else {
            format!("; spec revision {current} is held until the spec changes or a retry")
        };
        self.event(
            false,
            "Undone",
            format!("every node returns to revision {target}{held}"),
        );
    }

    /// The spec's revision was aborted or undone, and neither retried nor
    /// applied anew since: a spec that moves to another revision and back
    /// (the last status names another current revision) is a fresh attempt.
    fn blocked(&self) -> bool {
        let rev = Some(self.revision.as_str());
        matches!(
            history::outcome(&self.status.history, &self.revision),
            Some(RevisionOutcome::Aborted | RevisionOutcome::RolledBack)
        ) && self.input.status.current_revision.as_deref() == rev
            && self.status.candidate_revision.as_deref() != rev
            && self.status.stable_revision.as_deref() != rev
    }

    /// The rollout's clocks are wall-clock times in status (so a restarted
    /// or new leader resumes them). A clock that now reads earlier than one
    /// of them went back (NTP step, a replica whose clock is behind): the
    /// clock restarts from now instead of waiting out the jump, so a pause,
    /// an analysis window or the progress deadline is stretched by at most
    /// the time it had already run, never by the size of the jump. A jump
    /// forward cannot be told from time passing (an operator down for an
    /// hour) and counts as elapsed time.
    fn clock_went_back(&mut self) {
        let now = self.now;
        let mut ahead = 0;
        for t in [
            &mut self.progress.step_started_at,
            &mut self.progress.progress_at,
            &mut self.progress.held_since,
        ] {
            if let Some(x) = t.as_ref().map(secs)
                && x > now
            {
                ahead = ahead.max(x - now);
                *t = Some(time(now));
            }
        }
        if ahead > 0 {
            self.event(
                true,
                "ClockWentBack",
                format!(
                    "the clock reads {ahead}s before a time the rollout recorded; its step clocks restart from now"
                ),
            );
        }
    }

    /// `spec.paused` and pause requests; held time is given back on resume.
    fn hold(&mut self) {
        let rollout = self.status.candidate_revision.is_some();
        match (self.user_hold, self.progress.held_since.clone()) {
            (true, None) => {
                self.progress.held_since = Some(time(self.now));
                if rollout {
                    self.event(
                        false,
                        "RolloutPaused",
                        "rollout held by spec.paused or a pause request".into(),
                    );
                }
            }
            (false, Some(since)) => {
                let since = secs(&since);
                for t in [
                    &mut self.progress.step_started_at,
                    &mut self.progress.progress_at,
                ] {
                    if let Some(x) = t.as_ref().map(secs) {
                        *t = Some(time(x + self.now - since.max(x)));
                    }
                }
                self.progress.held_since = None;
                if rollout {
                    self.event(false, "RolloutResumed", "rollout resumed".into());
                }
            }
            _ => {}
        }
    }

    fn supersede(&mut self, reason: &str) {
        if let Some(c) = self.status.candidate_revision.take() {
            history::set_outcome(
                &mut self.status.history,
                &c,
                Some(RevisionOutcome::Superseded),
            );
            self.failure_hold = false;
            self.event(
                false,
                "RolloutSuperseded",
                format!("rollout of revision {c} dropped: {reason}"),
            );
        }
    }

    /// Starts, continues or drops a rollout from the spec's revision.
    fn choose_candidate(&mut self) {
        let rev = self.revision.clone();
        let candidate = self.status.candidate_revision.clone();
        if self.status.stable_revision.as_deref() == Some(rev.as_str()) {
            if candidate.is_some() {
                self.supersede(&format!("the spec is back at stable revision {rev}"));
            }
            return;
        }
        if candidate.as_deref() == Some(rev.as_str()) || self.blocked() {
            return;
        }
        self.supersede(&format!("the spec moved on to revision {rev}"));
        self.status.candidate_revision = Some(rev.clone());
        self.status.current_step_index = Some(0);
        self.status.last_analysis = None;
        self.progress.verified_revision = None;
        self.restart_clocks();
        let spec = self.input.spec;
        history::record_start(
            &mut self.status.history,
            &rev,
            spec,
            self.input.source_commit,
            time(self.now),
        );
        let stable = self
            .status
            .stable_revision
            .clone()
            .unwrap_or_else(|| "none".into());
        let strategy = match self.plan.kind {
            Kind::Immediate => "immediate",
            Kind::Canary { .. } => "canary",
            Kind::BlueGreen { .. } => "blueGreen",
        };
        self.event(false, "RolloutStarted", format!("rolling out revision {rev} (version {}) by {strategy}; stable revision is {stable}", spec.version));
    }

    /// Ends the retention of the previous revision after a blue-green switch.
    fn retention(&mut self) {
        let Some(r) = self.progress.retained_revision.clone() else {
            return;
        };
        let until = self.progress.retained_until.as_ref().map_or(self.now, secs);
        if self.now >= until || self.status.stable_revision.as_deref() == Some(r.as_str()) {
            self.progress.retained_revision = None;
            self.progress.retained_until = None;
            self.event(
                false,
                "PreviousUnloaded",
                format!("previous revision {r} is no longer kept loaded"),
            );
        } else {
            self.want_again(until - self.now);
        }
    }

    fn want_again(&mut self, seconds: i64) {
        let s = seconds.max(1);
        self.next_in = Some(self.next_in.map_or(s, |n| n.min(s)));
    }

    fn abort(&mut self, reason: &str, message: String) {
        let Some(c) = self.status.candidate_revision.take() else {
            return;
        };
        history::set_outcome(&mut self.status.history, &c, Some(RevisionOutcome::Aborted));
        self.failure_hold = false;
        let back = match &self.status.stable_revision {
            Some(s) => format!("every node returns to stable revision {s}"),
            None => format!("no stable revision: {c} is unloaded from every node"),
        };
        let message = format!("revision {c} aborted: {message}; {back}");
        self.event(true, reason, message.clone());
        self.event(true, "RolledBack", back);
        self.phase = Some(Phase::Aborted);
        self.message = Some(message);
        self.stall_reason = Some(reason.to_string());
    }

    fn fail(&mut self, reason: &'static str, message: String) {
        if self.input.spec.failure_policy == FailurePolicy::Rollback {
            self.abort(reason, message);
            return;
        }
        let Some(c) = self.status.candidate_revision.clone() else {
            return;
        };
        history::set_outcome(&mut self.status.history, &c, Some(RevisionOutcome::Aborted));
        self.failure_hold = true;
        let message = format!(
            "revision {c} failed: {message}; held by failurePolicy Pause (promote, retry or abort)"
        );
        self.event(true, reason, message.clone());
        self.phase = Some(Phase::Aborted);
        self.message = Some(message);
        self.stall_reason = Some(reason.to_string());
    }
}

mod advance;
mod finish;
#[cfg(test)]
mod tests;
pub mod verify;
