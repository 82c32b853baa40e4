//! Verify everywhere before switching anywhere (`strategy.verifyFirst`):
//! the candidate is loaded on every node before the first step, a kernel
//! that refuses it blocks the rollout (or is left out of it), and no node
//! switches while any node has not answered.

use super::*;
use crate::common::*;
use bpfleet_api::program::{BlueGreenStrategy, Phase, Strategy, VerifyFailurePolicy, VerifyFirst};
use bpfleet_operator::rollout::ActionKind;
use bpfleet_operator::rollout::selection::canary_count;

/// Ten nodes on v1: eight on kernel 6.8.0, node-08 and node-09 on 5.4.0,
/// whose kernel refuses v2 (its spec is returned, not applied).
fn mixed_fleet(strategy: Strategy) -> (Fleet, String, String) {
    let (mut f, v1) = stable_fleet(10);
    for (name, node) in f.nodes.iter_mut() {
        let old = name == "node-08" || name == "node-09";
        node.kernel = Some(if old { "5.4.0" } else { "6.8.0" }.to_string());
    }
    f.apply(spec("v2", strategy));
    let v2 = f.revision();
    for name in ["node-08", "node-09"] {
        f.nodes
            .get_mut(name)
            .expect("node")
            .refuses
            .insert(v2.clone());
    }
    (f, v1, v2)
}

fn policy(on_failure: VerifyFailurePolicy) -> Option<VerifyFirst> {
    Some(VerifyFirst {
        on_failure,
        ..Default::default()
    })
}

#[test]
fn a_kernel_that_refuses_the_candidate_blocks_the_canary_before_any_switch() {
    let (mut f, v1, v2) = mixed_fleet(canary(
        2,
        vec![percent(20), pause(Some("30s")), percent(100)],
    ));
    for _ in 0..10 {
        f.tick(1);
        assert_eq!(
            f.running(&v2),
            0,
            "no node switches: {:?}",
            f.status.message
        );
        if phase(&f) == Phase::Aborted {
            break;
        }
    }
    assert_eq!(phase(&f), Phase::Aborted, "{:?}", f.status.message);
    assert_eq!(f.event_count("VerificationFailed"), 1);
    let message = f.status.message.clone().unwrap_or_default();
    assert!(
        message.contains("2 of 10 nodes cannot load it")
            && message.contains("kernel 5.4.0: node-08, node-09"),
        "{message}"
    );
    let v = f.status.verification.clone().expect("verification");
    assert_eq!(v.result, "Failed");
    assert_eq!((v.nodes, v.verified, v.failed, v.pending), (10, 8, 2, 0));
    assert_eq!(v.kernels[0].kernel_release, "6.8.0");
    assert_eq!((v.kernels[0].nodes, v.kernels[0].failed), (8, 0));
    assert_eq!(
        (v.kernels[1].kernel_release.as_str(), v.kernels[1].failed),
        ("5.4.0", 2)
    );
    let failed: Vec<&str> = v.failed_nodes.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(failed, ["node-08", "node-09"]);
    f.settle(1, 5);
    assert_eq!(f.running(&v1), 10);
    assert_eq!(
        f.loaded(&v2),
        0,
        "the candidate is unloaded where it loaded"
    );
}

#[test]
fn excluded_nodes_keep_the_old_revision_and_the_rest_rolls_out() {
    let mut strategy = canary(2, vec![percent(20), pause(Some("30s")), percent(100)]);
    strategy.verify_first = policy(VerifyFailurePolicy::Exclude);
    let (mut f, v1, v2) = mixed_fleet(strategy);
    let mut ticks = 0;
    while f.status.stable_revision.as_deref() != Some(v2.as_str()) {
        f.tick(10);
        if f.status.current_step_index == Some(0) {
            // 20 % of the eight nodes that can run it.
            assert!(f.running(&v2) <= canary_count(20, 8));
        }
        for name in ["node-08", "node-09"] {
            assert_eq!(f.nodes[name].active.as_deref(), Some(v1.as_str()));
        }
        ticks += 1;
        assert!(ticks < 30, "stuck: {:?}", f.status.message);
    }
    f.settle(1, 5);
    assert_eq!(f.running(&v2), 8);
    assert_eq!(f.running(&v1), 2, "excluded nodes keep running v1");
    assert_eq!(f.event_count("NodesExcluded"), 1);
    assert_eq!(phase(&f), Phase::Degraded);
    assert_eq!(f.status.nodes.failed, 2);
    let v = f.status.verification.clone().expect("verification");
    assert_eq!((v.result.as_str(), v.failed), ("Excluded", 2));
}

#[test]
fn blue_green_verifies_before_its_preview_and_blocks_on_a_refusal() {
    let (mut f, v1, v2) = mixed_fleet(blue_green(BlueGreenStrategy {
        auto_promotion_enabled: true,
        auto_promotion_seconds: Some(0),
        pre_promotion_analysis: None,
        post_promotion_analysis: None,
        keep_previous_seconds: 0,
    }));
    f.settle(1, 10);
    assert_eq!(phase(&f), Phase::Aborted, "{:?}", f.status.message);
    assert_eq!(f.event_count("VerificationFailed"), 1);
    assert_eq!(f.running(&v1), 10);
    assert_eq!(f.running(&v2), 0);
}

#[test]
fn an_unreachable_node_holds_verification_until_the_deadline() {
    let (mut f, v1) = stable_fleet(4);
    let mut s = spec("v2", canary(4, vec![percent(100)]));
    s.progress_deadline_seconds = 120;
    f.apply(s);
    let v2 = f.revision();
    f.nodes.get_mut("node-02").expect("node").reachable = false;
    let out = f.tick(1);
    assert!(out.actions.iter().all(|a| a.kind == ActionKind::Load));
    f.tick(1);
    assert_eq!(phase(&f), Phase::Progressing);
    let message = f.status.message.clone().unwrap_or_default();
    assert!(
        message.contains("verifying") && message.contains("3 of 4"),
        "{message}"
    );
    assert_eq!(f.running(&v2), 0);
    f.tick(60);
    f.tick(61);
    assert_eq!(phase(&f), Phase::Aborted);
    assert_eq!(f.event_count("ProgressDeadlineExceeded"), 1);
    assert_eq!(f.running(&v1), 4);
}
