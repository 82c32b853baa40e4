//! Where a program's object file comes from (an OCI image, a file on the
//! node, a ConfigMap key or inline bytes) and its detached signature. Wire
//! shape only: resolving a source is the operator's and the agent's job.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the object file comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "[has(self.image), has(self.file), has(self.inline), has(self.configMap)].filter(x, x).size() == 1"
).message("exactly one of image, file, inline or configMap must be set"))]
pub struct BytecodeSource {
    /// OCI artifact holding the object, pinned by digest
    /// (`registry/repo@sha256:<64 hex>`); tags alone are refused because they move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageSource>,
    /// Absolute path of the object on every selected node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileSource>,
    /// The object itself, base64 encoded; for small programs (≤ 768 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 4, max = 1048576))]
    #[schemars(regex(pattern = r"^[A-Za-z0-9+/]+={0,2}$"))]
    pub inline: Option<String>,
    /// A key of a ConfigMap holding the object in `binaryData`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapSource>,
}

/// A digest-pinned OCI reference.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageSource {
    /// `registry/repository@sha256:<64 hex>`; a tag may precede the digest.
    #[schemars(regex(
        pattern = r"^[a-z0-9]+([._:/-][a-zA-Z0-9]+)*(:[\w][\w.-]{0,127})?@sha256:[a-f0-9]{64}$"
    ))]
    #[schemars(length(max = 512))]
    pub reference: String,
    /// Name of a `kubernetes.io/dockerconfigjson` Secret in the operator's
    /// namespace (`kubectl create secret docker-registry`). Only its entry
    /// for the reference's registry (host and port, matched exactly) is
    /// passed to the agents, with each Load; a missing Secret or entry makes
    /// nodes report SourceUnavailable until it is fixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_secret: Option<String>,
}

/// An object file that already exists on the nodes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FileSource {
    /// Absolute path, e.g. `/var/lib/bpfleet/objects/http.bpf.o`.
    #[schemars(regex(pattern = r"^/[^\x00]*$"))]
    #[schemars(length(max = 4096))]
    pub path: String,
}

/// A ConfigMap key holding the object.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapSource {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A detached signature over the object bytes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BytecodeSignature {
    /// Base64 signature as printed by `cosign sign-blob`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9+/]+={0,2}$"))]
    #[schemars(length(min = 16, max = 1024))]
    pub value: String,
    /// Which of the agents' trusted public keys should verify it; all are
    /// tried when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}
