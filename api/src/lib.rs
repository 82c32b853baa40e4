//! bpfleet's Kubernetes API: the `bpfleet.dev/v1alpha1` custom resources
//! `TracerProgram` and `TracerPolicy`, and the generation of their CRDs.
//!
//! This crate owns the wire shape of the API and the schema validation the
//! apiserver enforces (OpenAPI ranges, patterns, CEL rules). It does no I/O
//! and knows nothing of rollouts, gRPC or the kernel: the operator, the node
//! agent, the kubectl plugin and the tests all take their types from here.

pub mod crdgen;
pub mod policy;
pub mod program;
mod schema;

pub use policy::{TracerPolicy, TracerPolicySpec, TracerPolicyStatus};
pub use program::{TracerProgram, TracerProgramSpec, TracerProgramStatus};

/// API group of every bpfleet resource.
pub const GROUP: &str = "bpfleet.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
