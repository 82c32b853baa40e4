//! From "which revision should run where" to per-node actions, node counts
//! and the failing-node list.
//!
//! Each selected node gets a target: the candidate active if it is in the
//! candidate set, else the stable revision; the stable revision stays loaded
//! under a candidate (instant rollback), the candidate is loaded everywhere
//! during a blue-green preview, the retained previous revision stays loaded
//! until `keepPreviousSeconds` ends, and anything else loaded is unloaded.
//! At most `maxUnavailable` nodes (minus selected nodes already down or
//! failing) are switched to the candidate at once, in canary order;
//! moves back to stable are never limited. Frozen rollouts (held by a person
//! or by `failurePolicy: Pause`) leave running nodes on what they run, except
//! that a node outside the candidate set (the set shrinks when nodes leave)
//! returns to stable: no step ever has more candidate nodes than it allows. Nodes
//! whose agent is unreachable get nothing; departed nodes only get `Unload`.
//! A node that refused a revision gets nothing more for it (until a retry
//! moves its deployment); a node that could not fetch its source
//! (`SourceUnavailable`) is listed as failing, and its Load (with the
//! Activate after it) is sent again once [`retry_delay`] has passed.

use std::collections::{BTreeMap, BTreeSet};

use bpfleet_api::program::{FailingNode, NodeCounts};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::clock::secs;
use super::{ActionKind, NodeAction, NodeFailure, NodeReport};

/// At most this many failing nodes are listed in status.
pub const MAX_FAILING_NODES: usize = 20;

/// Wait before the first retry of a load whose source a node could not
/// fetch ([`super::SOURCE_UNAVAILABLE`]).
pub const RETRY_FIRST_SECONDS: i64 = 5;
/// Longest wait between two such retries.
pub const RETRY_MAX_SECONDS: i64 = 60;

/// Seconds a node waits, after its `attempts`-th load in a row failed for
/// want of the source, before the next: 5, 10, 20, 40, then 60 each time.
pub fn retry_delay(attempts: u32) -> i64 {
    let doublings = attempts.saturating_sub(1).min(8);
    (RETRY_FIRST_SECONDS << doublings).min(RETRY_MAX_SECONDS)
}

/// Seconds from `now` until the load that failed with `f` (a
/// source-unavailable failure) may be retried; zero or less: now.
pub fn retry_in(f: &NodeFailure, now: i64) -> i64 {
    secs(&f.at) + retry_delay(f.attempts) - now
}

/// Why the rollout does not move nodes to the candidate now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freeze {
    None,
    /// `spec.paused` or a pause request: new nodes still get their place.
    User,
    /// `failurePolicy: Pause` after a failure: new nodes get stable.
    Failure,
}

/// The desired placement, as decided by the machine.
pub struct Targets<'a> {
    pub stable: Option<&'a str>,
    pub candidate: Option<&'a str>,
    /// The spec's revision (for `updated`).
    pub current: &'a str,
    /// Nodes that should run the candidate, in canary order.
    pub candidate_nodes: &'a [&'a str],
    /// Candidate loaded on every node (blue-green preview and later).
    pub preload_all: bool,
    pub max_unavailable: usize,
    pub retained: Option<&'a str>,
    pub freeze: Freeze,
    /// Nodes verification left out of the candidate's rollout: not
    /// counted against `maxUnavailable`.
    pub excluded: &'a BTreeSet<String>,
    /// Revisions that were promoted once (the stable one and its
    /// predecessors): a node that refuses its target keeps one of these.
    pub promoted: &'a BTreeSet<String>,
}

/// Actions, counts and failing nodes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodePlan {
    pub actions: Vec<NodeAction>,
    pub counts: NodeCounts,
    pub failing: Vec<FailingNode>,
    /// Reachable, non-failing nodes whose active revision is not their
    /// target yet (failing ones are counted in `counts.failed` instead).
    pub unsettled: usize,
    /// Nodes failing to run what they should run now (unreachable, a
    /// wanted revision failed or its source cannot be fetched). Unlike
    /// `counts.failed`, without nodes whose only failure is of a spec
    /// revision no longer wanted (an aborted one): those run the stable
    /// revision, so they do not make the program degraded.
    pub troubled: i32,
    /// Seconds until the first load held back by its retry backoff is due
    /// (a node that could not fetch a revision's source).
    pub retry_in: Option<i64>,
}

/// Plans every node.
pub fn plan(
    t: &Targets<'_>,
    nodes: &[NodeReport],
    departed: &[NodeReport],
    previous_failing: &[FailingNode],
    now: &Time,
) -> NodePlan {
    let mut out = NodePlan::default();
    let switching = switch_allowance(t, nodes);
    let candidate_set: BTreeSet<&str> = t.candidate_nodes.iter().copied().collect();

    let mut failing = Vec::new();
    for node in nodes {
        let in_set = t.candidate.is_some() && candidate_set.contains(node.node.as_str());
        let mut active = match t.candidate {
            Some(c)
                if in_set
                    && (node.active() == Some(c) || switching.contains(node.node.as_str())) =>
            {
                Some(c)
            }
            _ => t.stable,
        };
        // A freeze keeps nodes where they are, but never above the share.
        let running = node
            .active()
            .filter(|a| Some(*a) == t.stable || (Some(*a) == t.candidate && in_set));
        match (t.freeze, running) {
            (Freeze::None, _) => {}
            (_, Some(r)) => active = Some(r),
            (Freeze::Failure, None) => active = t.stable,
            (Freeze::User, None) => {}
        }
        let mut loaded: BTreeSet<&str> = BTreeSet::new();
        loaded.extend(active);
        if active.is_some() && active == t.candidate {
            loaded.extend(t.stable);
        }
        // With no stable revision to switch back to, a node that must stop
        // running the candidate (the candidate set moved off it) can only
        // unload it; the next pass loads it again, inactive.
        let must_stop = t.stable.is_none() && active.is_none() && node.active() == t.candidate;
        if t.preload_all && !must_stop {
            loaded.extend(t.candidate);
        }
        loaded.extend(t.retained);

        // A node that refused the revision it should run keeps running
        // a former stable revision it runs (a node left out by
        // verification, after the rollout): the old revision rather than
        // none, listed as failing. A revision never promoted (one undone
        // or aborted) is not kept.
        if let (Some(a), Some(running)) = (active, node.active())
            && a != running
            && node.failure(a).is_some()
            && t.promoted.contains(running)
        {
            loaded.insert(running);
        }
        let wanted = || loaded.iter().copied().chain(t.candidate.filter(|_| in_set));
        let failure = wanted().find_map(|r| node.failure(r));
        // Not a failure of the revision: listed (and counted as failing)
        // while the node waits for the source, the load retried with backoff.
        let fetching = wanted()
            .filter(|r| !node.has(r))
            .find_map(|r| node.unavailable(r));
        let trouble = failure.or(fetching);
        if !node.reachable {
            failing.push(failing_node(
                node,
                None,
                "AgentUnreachable",
                "the node agent did not answer",
                previous_failing,
                now,
            ));
        } else if let Some(f) = trouble {
            failing.push(failing_node(
                node,
                Some(&f.revision),
                &f.reason,
                &f.message,
                previous_failing,
                now,
            ));
        }
        let troubled_here = !node.reachable || trouble.is_some();
        out.troubled += i32::from(troubled_here);
        // The spec's revision failed here but is no longer wanted (the
        // rollout aborted): still a failed node of that revision, listed
        // and counted as the abort's message says, until a retry or a new
        // spec (its failures are then stale and dropped).
        if !troubled_here && let Some(f) = node.failure(t.current) {
            failing.push(failing_node(
                node,
                Some(&f.revision),
                &f.reason,
                &f.message,
                previous_failing,
                now,
            ));
        }
        out.counts.desired += 1;
        if node.active() == Some(t.current) {
            out.counts.updated += 1;
        }
        let settled = node.active() == active;
        if !settled && node.reachable && trouble.is_none() {
            out.unsettled += 1;
        }
        if node.reachable && trouble.is_none() && settled {
            out.counts.ready += 1;
        }
        if !node.reachable {
            continue;
        }
        let skip = |r: &str| node.failure(r).is_some();
        // Seconds until a revision whose source the node could not fetch
        // may be loaded again; its Load and Activate wait until then.
        let held = |r: &str| {
            node.unavailable(r)
                .filter(|_| !node.has(r))
                .map(|f| retry_in(f, secs(now)))
                .filter(|&s| s > 0)
        };
        for r in &loaded {
            if !node.has(r) && !skip(r) {
                match held(r) {
                    Some(s) => out.retry_in = Some(out.retry_in.map_or(s, |n| n.min(s))),
                    None => out.actions.push(action(node, r, ActionKind::Load)),
                }
            }
        }
        if let Some(a) = active
            && node.active() != Some(a)
            && !skip(a)
            && held(a).is_none()
        {
            let kind = if Some(a) == t.stable && node.active().is_some() {
                ActionKind::Rollback
            } else {
                ActionKind::Activate
            };
            out.actions.push(action(node, a, kind));
        }
        for r in &node.revisions {
            if !loaded.contains(r.revision.as_str()) {
                out.actions
                    .push(action(node, &r.revision, ActionKind::Unload));
            }
        }
    }
    for node in departed.iter().filter(|n| n.reachable) {
        for r in &node.revisions {
            out.actions
                .push(action(node, &r.revision, ActionKind::Unload));
        }
    }
    out.counts.failed = i32::try_from(failing.len()).unwrap_or(i32::MAX);
    failing.sort_by(|a, b| a.node.cmp(&b.node));
    failing.truncate(MAX_FAILING_NODES);
    out.failing = failing;
    out.actions
        .sort_by(|a, b| (&a.node, a.kind, &a.revision).cmp(&(&b.node, b.kind, &b.revision)));
    out
}

/// The nodes of the candidate set that may start switching now.
fn switch_allowance<'a>(t: &Targets<'a>, nodes: &'a [NodeReport]) -> BTreeSet<&'a str> {
    let Some(c) = t.candidate else {
        return BTreeSet::new();
    };
    if t.freeze != Freeze::None {
        return BTreeSet::new();
    }
    let by_name: BTreeMap<&str, &NodeReport> = nodes.iter().map(|n| (n.node.as_str(), n)).collect();
    let report = |name: &str| by_name.get(name).copied();
    // `maxUnavailable` counts every selected node that is down or failing
    // (on the candidate or the stable revision), not only canaries. A node
    // waiting for the candidate's source still runs stable: it takes its
    // share below, as a node switching; one that cannot fetch the stable
    // revision runs nothing and counts here.
    let unavailable = nodes
        .iter()
        .filter(|n| !t.excluded.contains(&n.node))
        .filter(|n| {
            !n.reachable
                || n.failure(c).is_some()
                || t.stable.is_some_and(|s| {
                    n.failure(s).is_some() || (!n.has(s) && n.unavailable(s).is_some())
                })
        })
        .count();
    let mut budget = if t.max_unavailable == usize::MAX {
        usize::MAX
    } else {
        t.max_unavailable.saturating_sub(unavailable)
    };
    let mut allowed = BTreeSet::new();
    for name in t.candidate_nodes {
        let Some(node) = report(name) else { continue };
        if !node.reachable || node.active() == Some(c) || node.failure(c).is_some() {
            continue;
        }
        if budget == 0 {
            break;
        }
        budget -= 1;
        allowed.insert(node.node.as_str());
    }
    allowed
}

/// Nodes of the candidate set not yet running the candidate (loaded, when
/// `loaded_only`), leaving out nodes whose failure on it was tolerated.
pub fn waiting_for(
    candidate: &str,
    candidate_nodes: &[&str],
    all_nodes: &[NodeReport],
    loaded_only: bool,
) -> Vec<String> {
    let wanted: BTreeSet<&str> = candidate_nodes.iter().copied().collect();
    let set: Vec<&NodeReport> = if loaded_only {
        all_nodes.iter().collect()
    } else {
        all_nodes
            .iter()
            .filter(|n| wanted.contains(n.node.as_str()))
            .collect()
    };
    set.into_iter()
        .filter(|n| n.failure(candidate).is_none())
        .filter(|n| {
            if loaded_only {
                !n.has(candidate)
            } else {
                n.active() != Some(candidate)
            }
        })
        .map(|n| n.node.clone())
        .collect()
}

/// The reports without stale failures: those from before the failed
/// revision's latest deployment (`deployed_at` gives it per revision).
pub fn without_stale_failures(
    nodes: &[NodeReport],
    deployed_at: impl Fn(&str) -> Option<i64>,
) -> Vec<NodeReport> {
    nodes
        .iter()
        .map(|n| {
            let mut n = n.clone();
            n.failures
                .retain(|f| deployed_at(&f.revision).is_none_or(|d| secs(&f.at) >= d));
            n
        })
        .collect()
}

fn action(node: &NodeReport, revision: &str, kind: ActionKind) -> NodeAction {
    NodeAction {
        node: node.node.clone(),
        revision: revision.to_string(),
        kind,
    }
}

fn failing_node(
    node: &NodeReport,
    revision: Option<&str>,
    reason: &str,
    message: &str,
    previous: &[FailingNode],
    now: &Time,
) -> FailingNode {
    let since = previous
        .iter()
        .find(|p| p.node == node.node && p.reason == reason && p.revision.as_deref() == revision)
        .and_then(|p| p.since.clone())
        .unwrap_or_else(|| now.clone());
    FailingNode {
        node: node.node.clone(),
        revision: revision.map(str::to_string),
        reason: reason.to_string(),
        message: message.to_string(),
        since: Some(since),
    }
}

#[cfg(test)]
mod tests;
