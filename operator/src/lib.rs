//! bpfleet's operator. Its heart is pure logic with no I/O: the rollout
//! state machine ([`rollout`]), the health-gate evaluation ([`gates`]) and
//! the revision ids ([`revision`]). Around it, the reconciler
//! ([`controller`]) feeds the machine the spec, the last status, what the
//! node agents report ([`observe`], over gRPC via [`agents`], shared by
//! every program through the per-node [`cache`]) and the time,
//! then writes the status and carries out the node actions it returns
//! ([`load`] builds the agent requests). Everything the machine needs to
//! resume lives in `TracerProgramStatus`, so a restarted operator continues
//! exactly where the previous one stopped. [`run`] wires it together with
//! leader election ([`leader`]) and metrics ([`metrics`]); [`plugin`] is the
//! `kubectl bpfleet` command.
//!
//! Dependencies point one way: `rollout`, `gates`, `revision`, `selector`,
//! `requests`, `load`, `observe`, `cache` and [`runtime_config`] (a
//! TracerPolicy's `spec.config` as agent writes) know nothing of kube clients
//! or tonic channels; `controller` and `run` do.

pub mod agents;
pub mod cache;
pub mod controller;
pub mod error;
pub mod gates;
pub mod leader;
pub mod load;
pub mod metrics;
pub mod observe;
pub mod plugin;
pub mod policy;
pub mod requests;
pub mod revision;
pub mod rollout;
pub mod run;
pub mod runtime_config;
pub mod selector;

pub use error::{Error, Result};
