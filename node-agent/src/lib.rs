//! The bpfleet node agent: the only part of bpfleet that touches the
//! kernel. It owns everything under its pin root (`<pin-root>/<program>/
//! <revision>/` plus per-program shared pins: the gate, persistent maps,
//! switchable links) and its state file, and nothing else on the node.
//!
//! Layers, each depending only on the ones before: `names`, `hooks`,
//! `trust`, `state`, `audit` (pure or file-only) → `kernel` (libbpf) →
//! `agent` (lifecycle, budgets, re-adoption) → `server` (tonic gRPC over a
//! Unix socket and mTLS TCP, Prometheus endpoint) → `cli` (argument parsing
//! and a client for every RPC). `http` is the HTTP tracer's userspace (ring
//! buffer readers, per-revision figures, analytics, alerts, export), fed by
//! the agent's program views and served by `server` and `metrics`.

pub mod agent;
pub mod audit;
pub mod cli;
pub mod error;
pub mod hooks;
pub mod http;
pub mod kernel;
pub mod metrics;
pub mod names;
pub mod server;
pub mod state;
pub mod trust;

pub use agent::{Agent, Config};
pub use error::{Error, Result};
