//! The node figures of `Stats` against the real `/proc`, with the agent
//! core in-process (the test process is the agent process): present, and
//! moving with the node. Needs root (the agent's pin root).

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn stats_carry_node_figures_that_move() {
    let root = PinRoot::new("node-figures");
    let a = agent(&root);
    let before = a.stats("").unwrap().node.expect("node figures");
    let (total0, softirq0, system0) = (
        before.cpu_total_jiffies.expect("cpu total"),
        before.cpu_softirq_jiffies.expect("softirq"),
        before.cpu_system_jiffies.expect("system"),
    );
    let cpus = before.cpus.expect("cpus");
    assert!(cpus >= 1, "{before:?}");
    assert!(softirq0 <= total0 && system0 <= total0, "{before:?}");
    let agent0 = before.agent_cpu_jiffies.expect("agent cpu");
    let rss = before.agent_rss_bytes.expect("agent rss");
    assert!(rss > 1 << 20, "agent RSS {rss} bytes");

    // Busy work in this (the agent's) process, a few jiffies' worth at
    // USER_HZ 100, half of it in the kernel.
    let start = Instant::now();
    let mut x = 0u64;
    while start.elapsed() < Duration::from_millis(300) {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
        getppid_n(200);
    }

    let after = a.stats("").unwrap().node.expect("node figures");
    let total1 = after.cpu_total_jiffies.expect("cpu total");
    assert!(total1 > total0, "{before:?} then {after:?}");
    assert!(
        after.cpu_system_jiffies.expect("system") >= system0
            && after.cpu_softirq_jiffies.expect("softirq") >= softirq0,
        "{before:?} then {after:?}"
    );
    // 300 ms on every CPU at least (the node's clock ran for all of them).
    assert!(
        total1 - total0 >= u64::from(cpus) * 20,
        "{before:?} then {after:?}"
    );
    let agent1 = after.agent_cpu_jiffies.expect("agent cpu");
    assert!(
        agent1 > agent0,
        "the agent's own CPU time: {agent0} then {agent1}"
    );
    assert_eq!(after.cpus, Some(cpus));
}
