//! Unit tests of gate evaluation: each gate passing, failing and lacking data,
//! the figures written, and quantity parsing.

use super::*;
use bpfleet_api::policy::NoDataPolicy;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

fn sample(requests: u64, errors: u64, p99: f64) -> HealthSample {
    HealthSample {
        program_failures: 0,
        run_time_ns_delta: 60_000_000,
        run_count_delta: 100_000,
        events_lost: Some(0),
        wall_time_ns: 10_000_000_000,
        cpu_cores: 4,
        map_memory_bytes: 2 << 20,
        http_requests: requests,
        http_errors: errors,
        p99_latency_ms: Some(p99),
        node: None,
    }
}

fn all_gates() -> HealthGates {
    HealthGates {
        max_program_failures: 0,
        max_cpu_overhead_percent: Some(1.0),
        max_map_memory: Some(Quantity("4Mi".into())),
        max_error_rate_ratio: Some(1.1),
        max_p99_latency_ratio: Some(1.2),
        max_run_time_ratio: Some(1.2),
        max_events_lost: Some(0),
        max_node_softirq_percent: None,
        max_node_system_cpu_percent: None,
        max_agent_cpu_percent: None,
        max_agent_rss_mib: None,
        min_samples: 100,
        consecutive_failure_limit: 3,
        no_data: NoDataPolicy::Inconclusive,
    }
}

fn gate<'a>(m: &'a Measurement, name: &str) -> &'a GateResult {
    m.gates
        .iter()
        .find(|g| g.gate == name)
        .expect("gate present")
}

#[test]
fn healthy_candidate_passes_every_gate() {
    let cand = GroupFigures::from_samples(&[sample(1000, 10, 20.0)], 0);
    let stable = GroupFigures::from_samples(&[sample(1000, 10, 20.0), sample(1000, 10, 20.0)], 0);
    let m = evaluate(&all_gates(), &cand, &Baseline::from_group(&stable), true);
    assert_eq!(m.outcome, Outcome::Pass);
    assert_eq!(m.gates.len(), 7);
    assert!(m.gates.iter().all(|g| g.passed));
    // 60 ms of BPF time over 10 s on 4 cores = 0.15 %.
    assert_eq!(gate(&m, GATE_CPU).measured, "0.15 %");
    assert_eq!(gate(&m, GATE_MAP_MEMORY).measured, "2.0 MiB");
    assert_eq!(gate(&m, GATE_MAP_MEMORY).threshold, "<= 4.0 MiB");
}

#[test]
fn error_rate_above_ratio_fails_with_figures() {
    let cand = GroupFigures::from_samples(&[sample(1000, 50, 20.0)], 0);
    let stable = GroupFigures::from_samples(&[sample(2000, 20, 20.0)], 0);
    let m = evaluate(&all_gates(), &cand, &Baseline::from_group(&stable), true);
    assert_eq!(m.outcome, Outcome::Fail);
    let g = gate(&m, GATE_ERROR_RATE);
    assert!(!g.passed);
    assert_eq!(g.measured, "5.00 % (50/1000 requests)");
    assert_eq!(g.threshold, "<= 1.10 x 1.00 % = 1.10 %");
    assert!(m.failed_summary().contains("errorRate 5.00 %"));
}

#[test]
fn error_rate_at_exact_ratio_passes() {
    let cand = GroupFigures::from_samples(&[sample(1000, 10, 20.0)], 0);
    let base = Baseline {
        requests: Some(1000),
        error_rate: Some(0.01 / 1.1),
        p99_ms: Some(20.0),
        runs: Some(100_000),
        ns_per_run: Some(600.0),
    };
    let m = evaluate(&all_gates(), &cand, &base, true);
    assert!(gate(&m, GATE_ERROR_RATE).passed, "{m:?}");
}

#[test]
fn p99_above_ratio_fails() {
    let cand = GroupFigures::from_samples(&[sample(1000, 10, 30.0)], 0);
    let stable = GroupFigures::from_samples(&[sample(1000, 10, 20.0)], 0);
    let m = evaluate(&all_gates(), &cand, &Baseline::from_group(&stable), true);
    assert_eq!(m.outcome, Outcome::Fail);
    let g = gate(&m, GATE_P99);
    assert_eq!(g.measured, "30.0 ms");
    assert_eq!(g.threshold, "<= 1.20 x 20.0 ms = 24.0 ms");
}

#[test]
fn run_time_per_run_above_ratio_fails_with_its_figures() {
    // 600 ns per run on stable; the candidate costs twice as much.
    let mut costly = sample(1000, 10, 20.0);
    costly.run_time_ns_delta *= 2;
    let cand = GroupFigures::from_samples(&[costly], 0);
    let stable = GroupFigures::from_samples(&[sample(1000, 10, 20.0)], 0);
    let m = evaluate(&all_gates(), &cand, &Baseline::from_group(&stable), true);
    assert_eq!(m.outcome, Outcome::Fail);
    let g = gate(&m, GATE_RUN_TIME);
    assert_eq!(g.measured, "1200 ns per run (100000 runs)");
    assert_eq!(g.threshold, "<= 1.20 x 600 ns = 720 ns");
    assert!(
        m.failed_summary().contains("runTimePerRun 1200 ns"),
        "{}",
        m.failed_summary()
    );
    // Within the ratio it passes; in a preview (no traffic) it is left out.
    let mut dearer = sample(1000, 10, 20.0);
    dearer.run_time_ns_delta = 70_000_000;
    let cand = GroupFigures::from_samples(&[dearer], 0);
    let m = evaluate(&all_gates(), &cand, &Baseline::from_group(&stable), true);
    assert!(gate(&m, GATE_RUN_TIME).passed, "{m:?}");
    let m = evaluate(&all_gates(), &cand, &Baseline::from_group(&stable), false);
    assert!(m.gates.iter().all(|g| g.gate != GATE_RUN_TIME));
}

#[test]
fn run_time_per_run_is_weighted_by_runs_and_needs_runs_on_both_sides() {
    // 100 runs at 1000 ns and 300 at 200 ns: 400 ns per run, not 600.
    let mut a = sample(10, 0, 1.0);
    (a.run_time_ns_delta, a.run_count_delta) = (100_000, 100);
    let mut b = sample(10, 0, 1.0);
    (b.run_time_ns_delta, b.run_count_delta) = (60_000, 300);
    let g = GroupFigures::from_samples(&[a.clone(), b], 0);
    assert_eq!((g.runs, g.ns_per_run()), (400, Some(400.0)));
    // 100 runs is enough (minSamples 100); 99 on stable is not.
    let mut thin = a;
    thin.run_count_delta = 99;
    let m = evaluate(
        &all_gates(),
        &g,
        &Baseline::from_group(&GroupFigures::from_samples(&[thin], 0)),
        true,
    );
    let gate = gate(&m, GATE_RUN_TIME);
    assert_eq!(gate.message.as_deref(), Some(NO_DATA));
    assert!(
        gate.measured
            .contains("400 runs on the candidate, 99 on stable"),
        "{}",
        gate.measured
    );
    assert!(
        GroupFigures::default().ns_per_run().is_none(),
        "nothing ran: no figure"
    );
}

#[test]
fn events_lost_on_one_candidate_node_fail_and_silence_is_no_data() {
    let mut lossy = sample(1000, 10, 20.0);
    lossy.events_lost = Some(3);
    let cand = GroupFigures::from_samples(&[sample(1000, 10, 20.0), lossy], 0);
    let stable = GroupFigures::from_samples(&[sample(1000, 10, 20.0)], 0);
    let m = evaluate(&all_gates(), &cand, &Baseline::from_group(&stable), true);
    assert_eq!(m.outcome, Outcome::Fail);
    let g = gate(&m, GATE_EVENTS_LOST);
    assert_eq!(
        (g.measured.as_str(), g.threshold.as_str()),
        ("3 events", "<= 0 events")
    );
    // Absolute: it holds for a preview too.
    let m = evaluate(&all_gates(), &cand, &Baseline::default(), false);
    assert!(!gate(&m, GATE_EVENTS_LOST).passed);
    // A program that does not count losses is not taken to lose none.
    let mut silent = sample(1000, 10, 20.0);
    silent.events_lost = None;
    let cand = GroupFigures::from_samples(&[silent], 0);
    let m = evaluate(&all_gates(), &cand, &Baseline::from_group(&stable), true);
    assert_eq!(m.outcome, Outcome::NoData);
    let g = gate(&m, GATE_EVENTS_LOST);
    assert_eq!(g.message.as_deref(), Some(NO_DATA));
    assert!(
        g.measured.contains("does not count lost events"),
        "{}",
        g.measured
    );
}

#[test]
fn p99_is_request_weighted_across_nodes() {
    let g = GroupFigures::from_samples(&[sample(300, 0, 10.0), sample(100, 0, 50.0)], 0);
    assert_eq!(g.p99_ms, Some(20.0));
    assert_eq!(g.requests, 400);
}

#[test]
fn too_few_samples_is_no_data_never_pass() {
    let cand = GroupFigures::from_samples(&[sample(99, 0, 20.0)], 0);
    let stable = GroupFigures::from_samples(&[sample(1000, 10, 20.0)], 0);
    let m = evaluate(&all_gates(), &cand, &Baseline::from_group(&stable), true);
    assert_eq!(m.outcome, Outcome::NoData);
    let g = gate(&m, GATE_ERROR_RATE);
    assert!(!g.passed);
    assert_eq!(g.message.as_deref(), Some(NO_DATA));
    assert!(
        g.measured.contains("99 candidate / 1000 stable"),
        "{}",
        g.measured
    );
}

#[test]
fn a_failure_outweighs_missing_data() {
    let mut s = sample(10, 0, 20.0);
    s.program_failures = 2;
    let cand = GroupFigures::from_samples(&[s], 0);
    let m = evaluate(&all_gates(), &cand, &Baseline::default(), true);
    assert_eq!(m.outcome, Outcome::Fail);
    assert_eq!(gate(&m, GATE_PROGRAM_FAILURES).measured, "2 failures");
}

#[test]
fn load_failures_count_as_program_failures() {
    let cand = GroupFigures::from_samples(&[], 1);
    let mut gates = all_gates();
    gates.max_error_rate_ratio = None;
    gates.max_p99_latency_ratio = None;
    gates.max_run_time_ratio = None;
    gates.max_events_lost = None;
    gates.max_cpu_overhead_percent = None;
    gates.max_map_memory = None;
    let m = evaluate(&gates, &cand, &Baseline::default(), true);
    assert_eq!(m.outcome, Outcome::Fail);
    gates.max_program_failures = 1;
    let m = evaluate(&gates, &cand, &Baseline::default(), true);
    assert_eq!(m.outcome, Outcome::Pass);
}

#[test]
fn no_candidate_node_is_no_data() {
    let m = evaluate(
        &HealthGates::default(),
        &GroupFigures::default(),
        &Baseline::default(),
        true,
    );
    assert_eq!(m.outcome, Outcome::NoData);
}

#[test]
fn cpu_and_memory_over_budget_fail() {
    let mut s = sample(1000, 0, 20.0);
    s.run_time_ns_delta = 800_000_000; // 2 % of 4 cores over 10 s
    s.map_memory_bytes = 5 << 20;
    let cand = GroupFigures::from_samples(&[s], 0);
    let m = evaluate(&all_gates(), &cand, &Baseline::default(), false);
    assert_eq!(m.outcome, Outcome::Fail);
    assert_eq!(gate(&m, GATE_CPU).measured, "2.00 %");
    assert!(!gate(&m, GATE_CPU).passed);
    assert!(!gate(&m, GATE_MAP_MEMORY).passed);
}

#[test]
fn without_traffic_ratio_gates_are_left_out() {
    let cand = GroupFigures::from_samples(&[sample(0, 0, 0.0)], 0);
    let m = evaluate(&all_gates(), &cand, &Baseline::default(), false);
    assert_eq!(m.outcome, Outcome::Pass);
    assert!(
        m.gates
            .iter()
            .all(|g| g.gate != GATE_ERROR_RATE && g.gate != GATE_P99)
    );
}

#[test]
fn recorded_baseline_needs_no_sample_count() {
    let cand = GroupFigures::from_samples(&[sample(500, 5, 20.0)], 0);
    let base = Baseline {
        requests: None,
        error_rate: Some(0.01),
        p99_ms: Some(20.0),
        runs: None,
        ns_per_run: Some(600.0),
    };
    let m = evaluate(&all_gates(), &cand, &base, true);
    assert_eq!(m.outcome, Outcome::Pass);
}

#[test]
fn quantities() {
    assert_eq!(parse_quantity("64Mi").expect("q"), 64 << 20);
    assert_eq!(parse_quantity("1G").expect("q"), 1_000_000_000);
    assert_eq!(parse_quantity("1.5Ki").expect("q"), 1536);
    assert_eq!(parse_quantity("4096").expect("q"), 4096);
    assert!(parse_quantity("12 parsecs").is_err());
    assert!(parse_quantity("Mi").is_err());
    let mut gates = all_gates();
    gates.max_map_memory = Some(Quantity("lots".into()));
    let cand = GroupFigures::from_samples(&[sample(1, 0, 1.0)], 0);
    let m = evaluate(&gates, &cand, &Baseline::default(), false);
    assert_eq!(
        m.outcome,
        Outcome::Fail,
        "an impossible threshold fails the gate"
    );
    let g = gate(&m, GATE_MAP_MEMORY);
    assert_eq!(g.threshold, "lots");
    assert!(
        g.message
            .as_deref()
            .is_some_and(|t| t.contains("invalid quantity"))
    );
    assert!(m.failed_summary().contains("mapMemory"));
}

#[test]
fn bytes_format() {
    assert_eq!(format_bytes(512), "512 B");
    assert_eq!(format_bytes(1536), "1.5 KiB");
    assert_eq!(format_bytes(3 << 30), "3.0 GiB");
}

/// Found by the `agent_replies` fuzz target's checks: two nodes reporting
/// `u64::MAX` program errors overflowed the sum (a panic with overflow
/// checks, a wrap to a small count that passes the gate without).
#[test]
fn sums_of_agent_counters_saturate_and_still_fail() {
    let huge = HealthSample {
        program_failures: u64::MAX,
        http_requests: u64::MAX,
        http_errors: u64::MAX,
        ..sample(1000, 10, 20.0)
    };
    let g = GroupFigures::from_samples(&[huge.clone(), huge], 1);
    assert_eq!(g.nodes, 2);
    assert_eq!(g.program_failures, u64::MAX);
    assert_eq!((g.requests, g.errors), (u64::MAX, u64::MAX));
    assert!(g.p99_ms.is_some_and(|p| (p - 20.0).abs() < 1e-6));
    let m = evaluate(&all_gates(), &g, &Baseline::default(), true);
    assert!(!gate(&m, GATE_PROGRAM_FAILURES).passed);
    assert_eq!(m.outcome, Outcome::Fail);
}

/// A healthy sample from a node whose own figures are these.
fn on_node(softirq: f64, system: f64, agent_cpu: f64, rss_mib: u64) -> HealthSample {
    HealthSample {
        node: Some(NodeSample {
            softirq_percent: Some(softirq),
            system_cpu_percent: Some(system),
            agent_cpu_percent: Some(agent_cpu),
            agent_rss_bytes: Some(rss_mib << 20),
        }),
        ..sample(1000, 10, 20.0)
    }
}

fn node_gates() -> HealthGates {
    HealthGates {
        max_node_softirq_percent: Some(5.0),
        max_node_system_cpu_percent: Some(20.0),
        max_agent_cpu_percent: Some(10.0),
        max_agent_rss_mib: Some(256),
        ..all_gates()
    }
}

fn on_nodes(samples: &[(&'static str, HealthSample)]) -> GroupFigures {
    GroupFigures::from_nodes(samples.iter().map(|(n, s)| (*n, s)), 0)
}

#[test]
fn node_health_within_thresholds_passes_with_its_figures() {
    let cand = on_nodes(&[
        ("node-a", on_node(1.0, 8.0, 2.5, 40)),
        ("node-b", on_node(3.25, 12.0, 4.0, 60)),
    ]);
    let stable = GroupFigures::from_samples(&[sample(1000, 10, 20.0)], 0);
    let m = evaluate(&node_gates(), &cand, &Baseline::from_group(&stable), true);
    assert_eq!(m.outcome, Outcome::Pass, "{m:?}");
    let g = gate(&m, GATE_NODE_SOFTIRQ);
    assert_eq!(
        (g.measured.as_str(), g.threshold.as_str()),
        ("3.25 % on node-b", "<= 5.00 %")
    );
    assert_eq!(
        g.message.as_deref(),
        Some("worst of 2 candidate node(s) reporting: node-b")
    );
    let g = gate(&m, GATE_NODE_SYSTEM_CPU);
    assert_eq!(
        (g.measured.as_str(), g.threshold.as_str()),
        ("12.00 % on node-b", "<= 20.00 %")
    );
    let g = gate(&m, GATE_AGENT_CPU);
    assert_eq!(
        (g.measured.as_str(), g.threshold.as_str()),
        ("4.00 % of one core on node-b", "<= 10.00 % of one core")
    );
    let g = gate(&m, GATE_AGENT_RSS);
    assert_eq!(
        (g.measured.as_str(), g.threshold.as_str()),
        ("60.0 MiB on node-b", "<= 256.0 MiB")
    );
}

#[test]
fn each_node_health_gate_fails_on_the_worst_node_and_names_it() {
    let stable = Baseline::from_group(&GroupFigures::from_samples(&[sample(1000, 10, 20.0)], 0));
    let ok = on_node(1.0, 8.0, 2.5, 40);
    for (name, bad, measured) in [
        (
            GATE_NODE_SOFTIRQ,
            on_node(7.5, 8.0, 2.5, 40),
            "7.50 % on node-c",
        ),
        (
            GATE_NODE_SYSTEM_CPU,
            on_node(1.0, 35.0, 2.5, 40),
            "35.00 % on node-c",
        ),
        (
            GATE_AGENT_CPU,
            on_node(1.0, 8.0, 150.0, 40),
            "150.00 % of one core on node-c",
        ),
        (
            GATE_AGENT_RSS,
            on_node(1.0, 8.0, 2.5, 300),
            "300.0 MiB on node-c",
        ),
    ] {
        let cand = on_nodes(&[
            ("node-a", ok.clone()),
            ("node-c", bad),
            ("node-b", ok.clone()),
        ]);
        let m = evaluate(&node_gates(), &cand, &stable, true);
        assert_eq!(m.outcome, Outcome::Fail, "{name}: {m:?}");
        let g = gate(&m, name);
        assert!(!g.passed);
        assert_eq!(g.measured, measured);
        assert_eq!(
            g.message.as_deref(),
            Some("worst of 3 candidate node(s) reporting: node-c")
        );
        assert!(
            m.failed_summary().contains(&format!("{name} {measured}")),
            "{}",
            m.failed_summary()
        );
        // Only that gate failed.
        assert_eq!(m.gates.iter().filter(|g| !g.passed).count(), 1, "{m:?}");
    }
}

#[test]
fn node_health_without_figures_is_no_data_and_a_preview_leaves_it_out() {
    let stable = Baseline::from_group(&GroupFigures::from_samples(&[sample(1000, 10, 20.0)], 0));
    // The agents sent no node figures (older agents, /proc unreadable).
    let cand = on_nodes(&[("node-a", sample(1000, 10, 20.0))]);
    let m = evaluate(&node_gates(), &cand, &stable, true);
    assert_eq!(m.outcome, Outcome::NoData, "{m:?}");
    for name in [
        GATE_NODE_SOFTIRQ,
        GATE_NODE_SYSTEM_CPU,
        GATE_AGENT_CPU,
        GATE_AGENT_RSS,
    ] {
        let g = gate(&m, name);
        assert_eq!(g.message.as_deref(), Some(NO_DATA), "{g:?}");
        assert!(!g.passed);
    }
    // One figure missing on one node: judged on those that have it.
    let mut partial = on_node(9.0, 8.0, 2.5, 40);
    if let Some(n) = partial.node.as_mut() {
        n.agent_cpu_percent = None;
    }
    let cand = on_nodes(&[("node-a", partial), ("node-b", on_node(1.0, 8.0, 3.0, 40))]);
    let m = evaluate(&node_gates(), &cand, &stable, true);
    assert_eq!(
        gate(&m, GATE_AGENT_CPU).measured,
        "3.00 % of one core on node-b"
    );
    assert_eq!(gate(&m, GATE_NODE_SOFTIRQ).measured, "9.00 % on node-a");
    // No candidate node at all.
    let m = evaluate(&node_gates(), &GroupFigures::default(), &stable, true);
    assert_eq!(
        gate(&m, GATE_AGENT_RSS).measured,
        "no candidate node reported"
    );
    // An inactive preview carries no traffic: the gates are left out.
    let cand = on_nodes(&[("node-a", on_node(50.0, 50.0, 500.0, 4000))]);
    let m = evaluate(&node_gates(), &cand, &stable, false);
    assert!(
        m.gates.iter().all(|g| ![
            GATE_NODE_SOFTIRQ,
            GATE_NODE_SYSTEM_CPU,
            GATE_AGENT_CPU,
            GATE_AGENT_RSS
        ]
        .contains(&g.gate.as_str())),
        "{m:?}"
    );
    // A first rollout (nothing to compare with) still judges them.
    let m = evaluate_on(&node_gates(), &cand, &Baseline::default(), true, false);
    assert!(!gate(&m, GATE_NODE_SOFTIRQ).passed);
    assert!(m.gates.iter().all(|g| g.gate != GATE_ERROR_RATE));
    // Unset gates are off.
    let m = evaluate(&all_gates(), &cand, &stable, true);
    assert!(m.gates.iter().all(|g| g.gate != GATE_AGENT_RSS));
}
