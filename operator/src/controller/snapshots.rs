//! Revision snapshots: one ControllerRevision per revision of a program,
//! holding its [`RevisionSnapshot`] (what the revision id covers plus the
//! signature), owned by the TracerProgram, so a node joining mid-rollout, a
//! rollback or an undo can load a revision the current spec no longer
//! describes. Kept in the [`Context`]'s memory once read or written;
//! trimmed with the version registry, deleted with the program. The data's
//! JSON field names are persisted in the apiserver: they must not change.

use std::collections::{BTreeMap, HashSet};

use bpfleet_api::{TracerProgram, TracerProgramStatus};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use super::Context;
use crate::Result;
use crate::load::RevisionSnapshot;

/// Label on revision snapshots naming their program.
pub const PROGRAM_LABEL: &str = "bpfleet.dev/program";
/// Label on revision snapshots naming their revision.
pub const REVISION_LABEL: &str = "bpfleet.dev/revision";

pub(super) fn history_ids(s: &TracerProgramStatus) -> Vec<&str> {
    s.history.iter().map(|h| h.revision.as_str()).collect()
}

pub(super) fn snapshot_name(program: &str, revision: &str) -> String {
    format!("{program}-{revision}")
}

/// Keeps a ControllerRevision with the load spec of the spec's revision,
/// owned by the TracerProgram, so later rollbacks and new nodes can load it.
pub(super) async fn ensure_snapshot(
    tp: &TracerProgram,
    ctx: &Context,
    revision: &str,
) -> Result<()> {
    let program = tp.name_any();
    let key = (program.clone(), revision.to_string());
    let ls = RevisionSnapshot::from_spec(&tp.spec);
    if ctx
        .snapshots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
        == Some(&ls)
    {
        return Ok(());
    }
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let owner = OwnerReference {
        api_version: TracerProgram::api_version(&()).into_owned(),
        kind: TracerProgram::kind(&()).into_owned(),
        name: program.clone(),
        uid: tp.uid().unwrap_or_default(),
        controller: Some(false),
        block_owner_deletion: None,
    };
    let cr = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(snapshot_name(&program, revision)),
            namespace: Some(ctx.namespace.clone()),
            labels: Some(BTreeMap::from([
                (PROGRAM_LABEL.to_string(), program.clone()),
                (REVISION_LABEL.to_string(), revision.to_string()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: RawExtension(serde_json::to_value(&ls)?),
        revision: Some(tp.status.as_ref().map_or(0, |s| s.history.len() as i64) + 1),
    };
    match api.create(&PostParams::default(), &cr).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            // Same id: same bytecode, digest, programs and maps; the
            // signature may have been added since, so refresh the data.
            let patch = json!({"data": serde_json::to_value(&ls)?});
            api.patch(
                &snapshot_name(&program, revision),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        }
        Err(e) => return Err(e.into()),
    }
    ctx.snapshots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, ls);
    Ok(())
}

pub(super) async fn snapshot(
    ctx: &Context,
    program: &str,
    revision: &str,
) -> Result<RevisionSnapshot> {
    let key = (program.to_string(), revision.to_string());
    if let Some(ls) = ctx
        .snapshots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
    {
        return Ok(ls.clone());
    }
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let cr = api.get(&snapshot_name(program, revision)).await?;
    let ls: RevisionSnapshot = serde_json::from_value(cr.data.0)?;
    ctx.snapshots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, ls.clone());
    Ok(ls)
}

/// Deletes the snapshots of revisions the registry no longer lists.
pub(super) async fn prune_snapshots(ctx: &Context, program: &str, status: &TracerProgramStatus) {
    let keep: HashSet<&str> = status
        .history
        .iter()
        .map(|h| h.revision.as_str())
        .chain(status.current_revision.as_deref())
        .chain(status.stable_revision.as_deref())
        .chain(status.candidate_revision.as_deref())
        .collect();
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let lp = ListParams::default().labels(&format!("{PROGRAM_LABEL}={program}"));
    let Ok(list) = api.list(&lp).await else {
        return;
    };
    for cr in list {
        let rev = cr.labels().get(REVISION_LABEL).cloned().unwrap_or_default();
        if !keep.contains(rev.as_str()) {
            let name = cr.name_any();
            if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
                warn!(snapshot = %name, error = %e, "could not delete a trimmed revision snapshot");
            }
            ctx.snapshots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&(program.to_string(), rev));
        }
    }
}

pub(super) async fn delete_snapshots(ctx: &Context, program: &str) -> Result<()> {
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let lp = ListParams::default().labels(&format!("{PROGRAM_LABEL}={program}"));
    api.delete_collection(&DeleteParams::default(), &lp).await?;
    ctx.snapshots
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .retain(|k, _| k.0 != program);
    Ok(())
}
