//! Whole rollouts driven step by step on a simulated fleet with a fake clock:
//! every tick runs the state machine, checks it is a fixed point (same input
//! again: same status, same actions, no events) and lets the simulated
//! agents carry out the actions.
// Test code: helpers outside #[test] fns panic on purpose, the panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[path = "scenarios/blue_green.rs"]
mod blue_green;
#[path = "scenarios/canary.rs"]
mod canary;
#[path = "scenarios/clock.rs"]
mod clock;
#[path = "scenarios/lifecycle.rs"]
mod lifecycle;
#[path = "scenarios/verify.rs"]
mod verify;

use bpfleet_api::program::Phase;
use common::*;

/// A fleet of `n` nodes running `v1` as the stable revision.
pub(crate) fn stable_fleet(n: usize) -> (Fleet, String) {
    let mut f = Fleet::new(n, spec("v1", immediate()));
    f.settle(1, 10);
    assert_eq!(f.status.phase, Some(Phase::Healthy));
    let v1 = f.revision();
    assert_eq!(f.running(&v1), n);
    (f, v1)
}

pub(crate) fn phase(f: &Fleet) -> Phase {
    f.status.phase.expect("phase set")
}
