//! The reconcile's look at its nodes: what each holds of the program, as
//! [`NodeReport`]s for the machine, through the operator-wide
//! [`crate::cache`] (which makes the agent calls), with the health samples
//! and call failures the reconciler remembers. Turns sightings into
//! reports; decides nothing and calls no agent itself.

use std::collections::HashSet;

use super::Context;
use super::targets::Target;
use crate::cache::Sighting;
use crate::observe;
use crate::rollout::NodeReport;

/// What each of `targets` holds of `program` (in order), through the
/// cache: a node whose agent has no endpoint or does not answer is
/// unreachable.
pub(super) async fn observe(program: &str, targets: &[&Target], ctx: &Context) -> Vec<NodeReport> {
    observe_stamped(program, targets, ctx).await.reports
}

/// What [`observe_stamped`] saw of each node beside its report.
pub(super) struct Stamped {
    pub reports: Vec<NodeReport>,
    /// The configuration stamp of the program (None where the node does
    /// not hold it or did not answer).
    pub stamps: Vec<Option<u64>>,
    /// Where the program stands against its CPU budget (None: no budget
    /// reported).
    pub budgets: Vec<Option<bpfleet_proto::v1::CpuBudgetStatus>>,
    /// The policy alerts firing for the program there (alert, severity).
    pub firing: Vec<Vec<(String, String)>>,
}

/// [`observe`], with the configuration stamp, the CPU budget status and
/// the firing policy alerts of `program` on each node.
pub(super) async fn observe_stamped(program: &str, targets: &[&Target], ctx: &Context) -> Stamped {
    let asked: Vec<(&str, &str)> = targets
        .iter()
        .filter_map(|t| Some((t.name.as_str(), t.endpoint.as_deref()?)))
        .collect();
    let mut seen = ctx.cache.observe(program, &asked).await.into_iter();
    let sightings: Vec<Option<Sighting>> = targets
        .iter()
        .map(|t| t.endpoint.as_ref().and_then(|_| seen.next()))
        .collect();
    let stamps = sightings
        .iter()
        .map(|s| s.as_ref()?.view.as_ref()?.config_stamp(program))
        .collect();
    let budgets = sightings
        .iter()
        .map(|s| s.as_ref()?.view.as_ref()?.cpu_budget(program).cloned())
        .collect();
    let firing = sightings
        .iter()
        .map(|s| {
            s.as_ref()
                .and_then(|s| s.view.as_ref())
                .map(|v| v.firing_alerts(program).to_vec())
                .unwrap_or_default()
        })
        .collect();
    Stamped {
        reports: reports_of(program, targets, &sightings, ctx),
        stamps,
        budgets,
        firing,
    }
}

/// The reports of `program` on `targets` from what was seen of each.
pub(super) fn reports_of(
    program: &str,
    targets: &[&Target],
    seen: &[Option<Sighting>],
    ctx: &Context,
) -> Vec<NodeReport> {
    let failures = ctx.failures();
    let mut samples = ctx.samples();
    targets
        .iter()
        .zip(seen)
        .map(|(t, s)| {
            let mut r = match s
                .as_ref()
                .and_then(|s| Some((s.at.into_std(), s.view.as_ref()?)))
            {
                Some((at, view)) => observe::report(
                    &t.name,
                    program,
                    view,
                    &mut samples,
                    &failures,
                    ctx.ns(at),
                    t.cores,
                ),
                None => observe::unreachable(&t.name),
            };
            r.kernel.clone_from(&t.kernel);
            r
        })
        .collect()
}

/// Drops the sample windows of revisions no node holds any more.
pub(super) fn forget_unloaded(
    ctx: &Context,
    program: &str,
    targets: &[Target],
    reports: &[NodeReport],
) {
    let live: HashSet<(&str, &str)> = targets
        .iter()
        .zip(reports)
        .flat_map(|(t, r)| {
            r.revisions
                .iter()
                .map(move |v| (t.name.as_str(), v.revision.as_str()))
        })
        .collect();
    ctx.samples().retain(program, |n, r| live.contains(&(n, r)));
}
