//! Status writes, for both reconcilers: a resource's status subresource
//! written by server-side apply under the operator's one field manager
//! ([`MANAGER`]), forced, so the operator owns every status field it sets.
//! Knows nothing of what a status says; never writes a spec.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::Result;

/// Field manager of the status the operator writes.
pub const MANAGER: &str = "bpfleet-operator";

/// Writes `status` as the whole status of the cluster-wide object `name`
/// of kind `K`.
pub async fn apply<K>(client: &Client, name: &str, status: &impl Serialize) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}
