//! Reading a spec's `bytecode.image.pullSecret`: one `get` of the Secret
//! in the operator's own namespace (the only Secrets its RBAC lets it
//! read), then [`registry::from_secret`] picks the entry for the
//! reference's registry.
//!
//! The failure message names the Secret, its key and the registry; it is
//! built from the apiserver's status reason, not from the Secret, so
//! nothing the Secret holds can reach a node failure, a status, an event
//! or a log line.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use crate::registry::{self, Credentials};

/// The credentials the Secret `name` in `namespace` holds for the registry
/// of `reference`, or the message of the node failure that says why not.
pub async fn credentials(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    reference: &str,
) -> Result<Credentials, String> {
    let registry = registry::registry_of(reference);
    let what = format!("bytecode.image.pullSecret {namespace}/{name} (for registry {registry})");
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = match api.get_opt(name).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(format!(
                "{what}: no such Secret in the operator's namespace {namespace}"
            ));
        }
        Err(kube::Error::Api(s)) => {
            return Err(format!(
                "{what}: the apiserver refused to read it: {} ({}): {}",
                s.reason, s.code, s.message
            ));
        }
        Err(e) => return Err(format!("{what}: cannot be read: {}", kube_error_kind(&e))),
    };
    registry::from_secret(&secret, reference).map_err(|p| format!("{what}: {p}"))
}

/// What went wrong talking to the apiserver, without any body it sent
/// back (a failed decode could quote the Secret).
fn kube_error_kind(e: &kube::Error) -> String {
    match e {
        kube::Error::SerdeError(_) => "its answer could not be decoded".into(),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            "the apiserver did not answer".into()
        }
        _ => "a client error".into(),
    }
}
