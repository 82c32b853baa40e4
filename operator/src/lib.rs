//! bpfleet's operator. For now it holds the heart of it: the rollout state
//! machine ([`rollout`]), the health-gate evaluation ([`gates`]) and the
//! revision ids ([`revision`]), all pure logic with no I/O, no clock, no kube
//! client, no gRPC. A reconciler built on top feeds them the spec, the last
//! status, what the node agents report and the time, then writes the status
//! and carries out the node actions they return. Everything the machine needs
//! to resume lives in `TracerProgramStatus`, so a restarted operator continues
//! exactly where the previous one stopped.

pub mod error;
pub mod gates;
pub mod revision;
pub mod rollout;

pub use error::{Error, Result};
