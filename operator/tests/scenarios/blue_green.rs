//! Blue-green rollouts: preview, promotion, post-promotion analysis and the
//! retained previous revision.

use super::*;
use crate::common::*;
use bpfleet_api::program::{AnalysisVerdict, BlueGreenStrategy, Phase};
use bpfleet_operator::rollout::{ActionKind, CommandKind};

#[test]
fn blue_green_manual_promotion_and_keep_previous() {
    let (mut f, v1) = stable_fleet(4);
    f.apply(spec(
        "v2",
        blue_green(BlueGreenStrategy {
            auto_promotion_enabled: false,
            auto_promotion_seconds: None,
            pre_promotion_analysis: Some(window(20, 10)),
            post_promotion_analysis: Some(window(20, 10)),
            keep_previous_seconds: 120,
        }),
    ));
    let v2 = f.revision();
    let out = f.tick(1);
    assert!(out.actions.iter().all(|a| a.kind == ActionKind::Load));
    assert_eq!(f.loaded(&v2), 4);
    assert_eq!(f.running(&v2), 0, "preview is inactive");
    f.tick(1);
    assert_eq!(f.status.current_step.as_deref(), Some("1/5"));
    f.tick(10);
    f.tick(10);
    assert_eq!(
        f.status.last_analysis.as_ref().map(|a| a.verdict),
        Some(AnalysisVerdict::Passed)
    );
    assert_eq!(phase(&f), Phase::Paused);
    assert_eq!(
        f.status.message.as_deref(),
        Some("preview ready; waiting for promote")
    );
    for _ in 0..3 {
        assert!(f.tick(600).actions.is_empty());
    }
    f.command(CommandKind::Promote);
    let out = f.tick(1);
    assert_eq!(
        out.actions
            .iter()
            .filter(|a| a.kind == ActionKind::Activate)
            .count(),
        4,
        "all at once"
    );
    assert_eq!(f.running(&v2), 4);
    f.tick(1);
    f.tick(10);
    let out = f.tick(10);
    assert_eq!(
        f.status.stable_revision.as_deref(),
        Some(v2.as_str()),
        "{:?}",
        f.status.message
    );
    assert!(out.actions.is_empty(), "previous revision kept: {out:?}");
    assert_eq!(f.loaded(&v1), 4);
    assert_eq!(phase(&f), Phase::Healthy);
    assert!(f.tick(100).actions.is_empty());
    let out = f.tick(20);
    assert_eq!(
        out.actions
            .iter()
            .filter(|a| a.kind == ActionKind::Unload)
            .count(),
        4
    );
    assert_eq!(f.loaded(&v1), 0);
    assert_eq!(f.event_count("PreviousUnloaded"), 1);
}

#[test]
fn blue_green_post_promotion_failure_switches_back_instantly() {
    let (mut f, v1) = stable_fleet(4);
    f.apply(spec(
        "v2",
        blue_green(BlueGreenStrategy {
            auto_promotion_enabled: true,
            auto_promotion_seconds: Some(30),
            pre_promotion_analysis: None,
            post_promotion_analysis: Some(window(20, 10)),
            keep_previous_seconds: 300,
        }),
    ));
    let v2 = f.revision();
    f.health.insert(v2.clone(), traffic(1000, 100, 20.0));
    f.tick(1);
    f.tick(1);
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("auto promotion in 30s")
    );
    f.tick(30);
    assert_eq!(f.running(&v2), 4);
    f.tick(1);
    f.tick(10);
    let out = f.tick(10);
    assert_eq!(phase(&f), Phase::Aborted);
    assert!(
        out.actions.iter().all(|a| a.kind != ActionKind::Load),
        "v1 was still loaded"
    );
    assert_eq!(f.running(&v1), 4);
    assert!(
        f.status
            .message
            .clone()
            .unwrap_or_default()
            .contains("errorRate")
    );
}

/// After a blue-green switch every node runs the candidate: the run-time
/// gate compares it with the stable figure recorded just before.
#[test]
fn blue_green_post_promotion_run_time_gate_uses_the_recorded_baseline() {
    let (mut f, v1) = stable_fleet(4);
    f.apply(spec(
        "v2",
        blue_green(BlueGreenStrategy {
            auto_promotion_enabled: true,
            auto_promotion_seconds: Some(30),
            pre_promotion_analysis: None,
            post_promotion_analysis: Some(window(20, 10)),
            keep_previous_seconds: 300,
        }),
    ));
    let v2 = f.revision();
    let mut costly = traffic(1000, 10, 20.0);
    costly.run_time_ns_delta *= 3;
    f.health.insert(v2.clone(), costly);
    f.gates.max_run_time_ratio = Some(1.5);
    f.tick(1);
    f.tick(1);
    f.tick(30);
    assert_eq!(f.running(&v2), 4);
    f.tick(1);
    f.tick(10);
    f.tick(10);
    assert_eq!(phase(&f), Phase::Aborted);
    assert_eq!(f.running(&v1), 4);
    let message = f.status.message.clone().unwrap_or_default();
    assert!(
        message.contains(
            "runTimePerRun 1500 ns per run (80000 runs) (threshold <= 1.50 x 500 ns = 750 ns)"
        ),
        "{message}"
    );
}
