//! Whole rollouts against real components: etcd and kube-apiserver built
//! from the Go module proxy, three real `bpfleet-agent` processes standing
//! for three nodes (own pin roots on bpffs, Unix sockets, found through the
//! `bpfleet.dev/agent-endpoint` Node annotation), real BPF programs on the
//! running kernel, and the operator in-process (so the test can stop and
//! restart it like a crashed pod). Root only.
//!
//! One test walks the life of a program, because the control plane and the
//! agents are the expensive part: immediate v1; canary v2 to 100 % with the
//! counters switching slot; canary v3 held at a pause, the operator killed
//! and restarted (it resumes at the same step), promoted by annotation;
//! a verifier-rejected revision aborted and rolled back with the reason in
//! status; an unhealthy revision (program errors) failing its analysis gate
//! on measured figures and rolled back; an agent killed mid-rollout
//! reported as unreachable; blue-green with promotion; undo to an older
//! revision; and deletion unloading every pin from every node.
//!
//! The agent binary comes from the same build (`cargo test --workspace`
//! builds it); run `cargo build -p bpfleet-agent` first when testing this
//! crate alone.
//!
//! One file per topic under `rollout_e2e/`: [`lifecycle`], [`policy`],
//! [`hostile`], [`images`], [`faults`] (control-plane faults); the agents
//! and what they hold in [`nodes`], the control plane side in [`cluster`]. One test binary, so the tests still run side
//! by side, each with its own control plane and agents.

// Test code: a failed setup panics, and the panic message is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "rollout_e2e/cluster.rs"]
mod cluster;
#[path = "rollout_e2e/faults.rs"]
mod faults;
#[path = "rollout_e2e/hostile.rs"]
mod hostile;
#[path = "rollout_e2e/images.rs"]
mod images;
#[path = "rollout_e2e/lifecycle.rs"]
mod lifecycle;
#[path = "rollout_e2e/nodes.rs"]
mod nodes;
#[path = "rollout_e2e/orphans.rs"]
mod orphans;
#[path = "rollout_e2e/policy.rs"]
mod policy;
#[path = "rollout_e2e/verify.rs"]
mod verify;
