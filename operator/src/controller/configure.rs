//! The applying TracerPolicy's runtime configuration put in force on the
//! program's nodes during a reconcile ([`crate::policy::sync`] does the
//! writes, and sums up the policy's alerts firing there), announced by an
//! Event. The policy's own status is the policy
//! reconciler's ([`crate::policy::reconcile`]), not this module's.

use bpfleet_api::{TracerPolicy, TracerProgram};
use kube::ResourceExt;

use super::Context;
use super::report::publish;
use super::targets::Target;
use crate::policy;
use crate::rollout::{self, NodeReport};

/// Puts the applying policy's configuration in force on every node that
/// holds the program (see [`policy::sync`]); an Event when it wrote some.
pub(super) async fn configure(
    tp: &TracerProgram,
    ctx: &Context,
    policy: Option<&TracerPolicy>,
    targets: &[Target],
    reports: &[NodeReport],
    stamps: &[Option<u64>],
    firing: &[Vec<(String, String)>],
) -> Option<bpfleet_api::program::AppliedPolicy> {
    let name = tp.name_any();
    let holding: Vec<policy::Holding> = targets
        .iter()
        .zip(reports)
        .zip(stamps)
        .zip(firing)
        .filter_map(|(((t, r), s), f)| {
            Some(policy::Holding {
                node: &t.name,
                endpoint: t.endpoint.as_deref(),
                stamp: (*s)?,
                firing: f,
                revisions: r
                    .revisions
                    .iter()
                    .map(|v| v.revision.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            })
        })
        .collect();
    let synced = policy::sync(
        &ctx.pool,
        &ctx.cache,
        &ctx.metrics,
        &ctx.refusals,
        &name,
        policy,
        &holding,
    )
    .await;
    if synced.written > 0 {
        let message = match policy {
            Some(p) => format!(
                "TracerPolicy {} (generation {}) configuration written on {} node(s)",
                p.name_any(),
                p.metadata.generation.unwrap_or(0),
                synced.written
            ),
            None => format!(
                "no TracerPolicy applies: program defaults restored on {} node(s)",
                synced.written
            ),
        };
        let ev = rollout::Event {
            reason: "ConfigApplied".into(),
            message,
            warning: false,
        };
        publish(tp, ctx, std::slice::from_ref(&ev)).await;
    }
    synced.applied
}
