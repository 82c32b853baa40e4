//! What a reconcile tells the cluster besides the machine's status: the
//! status of a spec that cannot be acted on ([`stalled`]), the machine's
//! Events ([`publish`]), and which TracerPolicy applies ([`policy_for`]).
//! Status goes through [`crate::status`] (server-side apply under the
//! operator's field manager); nothing here calls an agent.

use std::sync::Arc;

use bpfleet_api::{TracerPolicy, TracerProgram, TracerProgramStatus};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use tracing::warn;

use super::{Context, now};
use crate::{Error, Result, observe, policy, rollout, status};

/// Writes a status saying why the spec cannot be acted on.
pub(super) async fn stalled(
    tp: &TracerProgram,
    ctx: &Context,
    old: &TracerProgramStatus,
    generation: i64,
    err: &Error,
) -> Result<Action> {
    let name = tp.name_any();
    let message = err.to_string();
    let mut st = old.clone();
    st.observed_generation = Some(generation);
    st.message = Some(message.clone());
    let now = now();
    let cond = |type_: &str, status: &str, reason: &str| {
        let since = old
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.clone(),
            observed_generation: Some(generation),
            last_transition_time: since,
        }
    };
    let mut conditions = vec![
        cond("Ready", "False", "InvalidSpec"),
        cond("Stalled", "True", "InvalidSpec"),
        cond("Reconciling", "False", "InvalidSpec"),
    ];
    for c in &old.conditions {
        if !conditions.iter().any(|n| n.type_ == c.type_) {
            conditions.push(c.clone());
        }
    }
    st.conditions = conditions;
    if st != *old {
        status::apply::<TracerProgram>(&ctx.client, &name, &st).await?;
        publish(
            tp,
            ctx,
            &[rollout::Event {
                warning: true,
                reason: "InvalidSpec".into(),
                message: message.clone(),
            }],
        )
        .await;
    }
    warn!(program = %name, %message, "spec cannot be acted on");
    Err(Error::InvalidSpec(message))
}

pub(super) async fn publish(tp: &TracerProgram, ctx: &Context, events: &[rollout::Event]) {
    let reference = tp.object_ref(&());
    for e in events {
        let ev = KubeEvent {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.clone(),
            note: Some(observe::truncate(&e.message, 1000)),
            action: "Rollout".into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&ev, &reference).await {
            warn!(reason = %e.reason, error = %err, "could not publish event");
        }
    }
}

/// The TracerPolicy that applies to `tp` (see [`policy::winner`]).
pub(super) fn policy_for(
    tp: &TracerProgram,
    policies: &Store<TracerPolicy>,
) -> Option<Arc<TracerPolicy>> {
    let all = policies.state();
    let name = tp.name_any();
    let targeting = all
        .iter()
        .filter(|p| policy::targets_program(p, &name, tp.labels()))
        .count();
    if targeting > 1 {
        warn!(program = %name, policies = targeting,
            "several TracerPolicies target this program; the first by name applies");
    }
    policy::winner(&name, tp.labels(), &all).cloned()
}
