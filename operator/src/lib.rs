//! bpfleet's operator. Its heart is pure logic with no I/O: the rollout
//! state machine ([`rollout`]), the health-gate evaluation ([`gates`]) and
//! the revision ids ([`revision`]). Around it, the reconciler
//! ([`controller`]) feeds the machine the spec, the last status, what the
//! node agents report ([`observe`], over gRPC via [`agents`], shared by
//! every program through the per-node [`cache`]) and the time,
//! then writes the status it returns ([`status`]) and carries out the node
//! actions ([`load`] builds the agent requests). Everything the machine
//! needs to resume lives in `TracerProgramStatus`, so a restarted operator
//! continues exactly where the previous one stopped. [`policy`] is the
//! TracerPolicy side (which policy applies, its writes to the nodes, its
//! status). [`run`] wires it together with leader election ([`leader`])
//! and metrics ([`metrics`]); [`plugin`] is the `kubectl bpfleet` command.
//!
//! The layers, each using only those above it (no module uses one below):
//!
//! 1. pure, no kube client, no tonic channel: `rollout`, `gates`,
//!    `revision`, `selector`, `requests`, `load`, `observe`,
//!    [`runtime_config`] (a TracerPolicy's `spec.config` as agent writes),
//!    [`registry`] (an image's registry and its pull secret's entry),
//!    `error`, `metrics`, and `cache` (given its agent call);
//! 2. the edges: `agents` (agent discovery, the channel pool, the
//!    observation call), `status` (status by server-side apply under
//!    the one field manager) and [`pull_secret`] (the one Secret read);
//! 3. `policy`, which uses both edges;
//! 4. `controller`, which uses `policy` (sync and winner), never the
//!    other way;
//! 5. `run`, `leader` and `plugin` (the binaries' wiring).

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
pub mod pull_secret;
pub mod registry;
pub mod requests;
pub mod revision;
pub mod rollout;
pub mod run;
pub mod runtime_config;
pub mod selector;
pub mod slim;
pub mod status;

pub use error::{Error, Result};
