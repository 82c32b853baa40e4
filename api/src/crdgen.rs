//! Rendering of the CRD manifests committed under `crds/`.
//!
//! `crdgen` writes them; the `crds_are_current` test fails when the committed
//! files differ from what the Rust types generate.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{TracerPolicy, TracerProgram};

/// Every CRD with the file name it is committed under.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("tracerprograms.bpfleet.dev.yaml", TracerProgram::crd()),
        ("tracerpolicies.bpfleet.dev.yaml", TracerPolicy::crd()),
    ]
}

/// The YAML text committed for one CRD.
pub fn render(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(crd)?;
    Ok(format!(
        "# Generated from the Rust types in api/ by `cargo run -p bpfleet-api --bin crdgen`.\n# Do not edit: CI fails when this file differs from what the types generate.\n{body}"
    ))
}
