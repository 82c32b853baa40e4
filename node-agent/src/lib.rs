//! The bpfleet node agent: the only part of bpfleet that touches the
//! kernel. It owns everything under its pin root (`<pin-root>/<program>/
//! <revision>/` plus per-program shared pins: the dispatchers and their
//! slots, persistent maps, switchable links) and its state file, and
//! nothing else on the node.
//!
//! Layers; arrows point one way, from each layer to the ones before it:
//!
//! ```text
//! names, hooks, trust, state, audit,  pure or file-only
//! map_layout, peer, procfs
//!        ^
//! kernel/                             the one kernel boundary: every libbpf-rs,
//!        ^                            libbpf-sys and libc call of the crate
//! agent/                              request -> admit -> load/switch/unload/
//!        ^                            adopt/config -> state; views; publishes
//!        |                            program views on a watch channel
//! http/  (tracer userspace)           follows the views; readers via bpfleet_tracer
//! bpflog/ (BPF log records)           follows the views; the node's log ring to
//!                                     JSON lines on stdout
//!        ^
//! server, metrics                     tonic gRPC (Unix socket, mTLS TCP),
//!        ^                            Prometheus and the HTTP API
//! cli                                 arguments and a client for every RPC
//! ```
//!
//! `agent/request.rs`, `agent/admit.rs` and `agent/budget.rs` are pure and
//! unit-tested without root; everything that needs the kernel goes through
//! `kernel/`, which holds no bookkeeping. `error` is shared by all layers
//! and names no libbpf type. `fault` holds the test-only fault points
//! (feature `fault-injection`), called from `agent/` and `kernel/`.

pub mod agent;
pub mod alerts;
pub mod audit;
pub mod bpflog;
pub mod civil;
pub mod cli;
pub mod error;
pub mod fault;
pub mod hooks;
pub mod http;
pub mod image;
pub mod kernel;
pub mod map_layout;
pub mod metrics;
pub mod names;
pub mod peer;
pub mod procfs;
pub mod server;
pub mod state;
pub mod trust;

pub use agent::{Agent, Config};
pub use error::{Error, Result};
