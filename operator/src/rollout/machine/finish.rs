//! Assembling the output: node plan, phase and message, counts, history,
//! conditions and the requeue hint.

use std::collections::{BTreeMap, BTreeSet};

use bpfleet_api::program::{FailingNode, Phase, RevisionOutcome};

use super::Machine;
use crate::rollout::clock::time;
use crate::rollout::conditions::{self, Facts};
use crate::rollout::history;
use crate::rollout::nodes::{self, Freeze, Targets};
use crate::rollout::plan::Kind;
use crate::rollout::{Output, SOURCE_UNAVAILABLE};

impl Machine<'_> {
    pub(super) fn finish(mut self) -> Output {
        let now = time(self.now);
        let candidate = self.status.candidate_revision.clone();
        let stable = self.status.stable_revision.clone();
        let index = self.step_index();
        let (placement, set) = match candidate.as_deref() {
            // While verifying, the candidate is loaded but runs nowhere.
            Some(c) if self.verifying(c) => (Default::default(), Vec::new()),
            Some(_) => (self.plan.placement(index), self.candidate_set(index)),
            None => (Default::default(), Vec::new()),
        };
        let freeze = if self.failure_hold {
            Freeze::Failure
        } else if self.user_hold {
            Freeze::User
        } else {
            Freeze::None
        };
        let max_unavailable = match self.plan.kind {
            Kind::Canary { max_unavailable } if !placement.all_at_once => max_unavailable,
            _ => usize::MAX,
        };
        let retained = self.progress.retained_revision.clone();
        let excluded = candidate
            .as_deref()
            .map(|c| self.excluded(c))
            .unwrap_or_default();
        let promoted: BTreeSet<String> = self
            .status
            .history
            .iter()
            .filter(|r| r.outcome == Some(RevisionOutcome::Promoted))
            .map(|r| r.revision.clone())
            .collect();
        let targets = Targets {
            stable: stable.as_deref(),
            candidate: candidate.as_deref(),
            current: &self.revision,
            candidate_nodes: &set,
            // Verification leaves the candidate loaded everywhere, so each
            // later switch is only a switch.
            preload_all: placement.preload_all || (candidate.is_some() && self.verify.is_some()),
            excluded: &excluded,
            promoted: &promoted,
            max_unavailable,
            retained: retained.as_deref(),
            freeze,
        };
        let plan = nodes::plan(
            &targets,
            &self.nodes,
            self.input.departed,
            &self.input.status.failing_nodes,
            &now,
        );

        if let Some(s) = plan.retry_in {
            self.want_again(s);
        }
        self.source_events(&plan.failing);

        let previous_phase = self.input.status.phase;
        let (phase, message) = match (self.phase, candidate.as_deref()) {
            (Some(p), _) => (p, self.message.clone().unwrap_or_default()),
            (None, Some(c)) => (Phase::Progressing, format!("rolling out revision {c}")),
            (None, None) => self.idle_phase(plan.unsettled, plan.troubled, previous_phase),
        };
        let stall_reason = self.stall_reason.clone().unwrap_or_else(|| {
            self.input
                .status
                .conditions
                .iter()
                .find(|c| c.type_ == conditions::STALLED && c.status == "True")
                .map_or_else(|| "RolloutAborted".to_string(), |c| c.reason.clone())
        });

        let total = self.plan.len();
        let st = &mut self.status;
        st.observed_generation = Some(self.input.generation);
        st.phase = Some(phase);
        st.current_revision = Some(self.revision.clone());
        st.current_step_index = Some(i32::try_from(index.min(total)).unwrap_or(i32::MAX));
        st.current_step = Some(format!("{}/{total}", index.min(total)));
        st.current_node_percent =
            (plan.counts.desired > 0).then(|| plan.counts.updated * 100 / plan.counts.desired);
        st.node_summary = Some(format!("{}/{}", plan.counts.updated, plan.counts.desired));
        st.nodes = plan.counts.clone();
        st.failing_nodes = plan.failing;
        let active: Vec<&str> = [stable.as_deref(), candidate.as_deref(), retained.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        history::refresh_states(&mut st.history, &active);
        history::trim(
            &mut st.history,
            self.input.spec.revision_history_limit,
            &[self.revision.as_str()],
        );
        st.conditions = conditions::build(
            &self.input.status.conditions,
            &Facts {
                phase,
                message: &message,
                stall_reason: &stall_reason,
                failed_nodes: plan.troubled,
                generation: self.input.generation,
                now: &now,
            },
        );
        st.message = Some(message);
        let parallel = candidate.as_deref().and_then(|c| self.load_budget(c));
        let st = &mut self.status;
        st.rollout = Some(self.progress);
        Output {
            status: self.status,
            actions: plan.actions,
            events: self.events,
            requeue_after: self.next_in,
            parallel,
        }
    }

    /// A warning per revision whose source nodes newly cannot fetch (not
    /// listed so in the last status), with the first node's answer. Nodes
    /// stay listed while the load is retried, so each wait is told once.
    fn source_events(&mut self, failing: &[FailingNode]) {
        let mut new: BTreeMap<&str, Vec<&FailingNode>> = BTreeMap::new();
        for f in failing.iter().filter(|f| f.reason == SOURCE_UNAVAILABLE) {
            let known = self
                .input
                .status
                .failing_nodes
                .iter()
                .any(|p| p.node == f.node && p.reason == f.reason && p.revision == f.revision);
            if !known {
                new.entry(f.revision.as_deref().unwrap_or_default())
                    .or_default()
                    .push(f);
            }
        }
        for (revision, nodes) in new {
            let mut names: Vec<&str> = nodes.iter().take(5).map(|f| f.node.as_str()).collect();
            if nodes.len() > 5 {
                names.push("...");
            }
            let first = nodes.first().map_or("", |f| f.message.as_str());
            self.event(
                true,
                SOURCE_UNAVAILABLE,
                format!(
                    "{} node(s) cannot fetch the source of revision {revision} ({}); their load is retried with backoff: {first}",
                    nodes.len(),
                    names.join(", ")
                ),
            );
        }
    }

    /// Phase and message when no rollout is under way.
    fn idle_phase(
        &self,
        unsettled: usize,
        failed: i32,
        previous: Option<Phase>,
    ) -> (Phase, String) {
        let rev = &self.revision;
        let outcome = history::outcome(&self.status.history, rev);
        if self.blocked() && outcome == Some(RevisionOutcome::Aborted) {
            let message = match (previous, &self.input.status.message) {
                (Some(Phase::Aborted), Some(m)) => m.clone(),
                _ => format!("revision {rev} was aborted; retry or change the spec"),
            };
            return (Phase::Aborted, message);
        }
        let Some(stable) = &self.status.stable_revision else {
            return (Phase::Pending, "no revision rolled out yet".into());
        };
        let held = if self.blocked() {
            format!("; spec revision {rev} held until the spec changes or a retry")
        } else {
            String::new()
        };
        let nodes = self.input.nodes.len();
        if nodes == 0 {
            (
                Phase::Healthy,
                format!(
                    "no node matches the node selector; nodes that do will get revision {stable}{held}"
                ),
            )
        } else if unsettled > 0 {
            (
                Phase::Progressing,
                format!("moving {unsettled} of {nodes} nodes to revision {stable}{held}"),
            )
        } else if failed > 0 {
            (
                Phase::Degraded,
                format!("{failed} of {nodes} nodes fail to run revision {stable}{held}"),
            )
        } else {
            (
                Phase::Healthy,
                format!("revision {stable} runs on all {nodes} nodes{held}"),
            )
        }
    }
}
