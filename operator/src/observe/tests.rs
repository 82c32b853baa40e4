use super::*;
use crate::rollout::clock::time;

fn stats(run_time_ns: u64, errors: u64, http: Option<pb::HttpFigures>) -> Figures {
    Figures {
        run_time_ns,
        // 100 ns per run.
        run_count: run_time_ns / 100,
        events_lost: Some(errors),
        program_errors: errors,
        map_memory_bytes: 4096,
        http: http.map(Box::new),
        node: None,
    }
}

/// Program "p", revision "r1".
trait P1 {
    fn p1(&mut self, node: &str, f: &Figures, now: u64, cores: u32) -> Option<HealthSample>;
}

impl P1 for SampleBook {
    fn p1(&mut self, node: &str, f: &Figures, now: u64, cores: u32) -> Option<HealthSample> {
        self.sample(node, "p", "r1", f, now, cores)
    }
}

fn hist(requests: u64, errors: u64, counts: [u64; 4]) -> pb::HttpFigures {
    pb::HttpFigures {
        requests,
        errors,
        latency_bounds_seconds: vec![0.01, 0.1, 1.0],
        latency_bucket_counts: counts.to_vec(),
    }
}

const S: u64 = 1_000_000_000;

#[test]
fn first_sight_has_no_sample_then_deltas_over_the_window() {
    let mut b = SampleBook::default();
    assert_eq!(b.p1("n1", &stats(1000, 2, None), 0, 2), None);
    // Too soon: still nothing to say.
    assert_eq!(b.p1("n1", &stats(1500, 2, None), S / 2, 2), None);
    let s = b.p1("n1", &stats(2_001_000, 5, None), 2 * S, 2).unwrap();
    assert_eq!(s.run_time_ns_delta, 2_000_000);
    assert_eq!(s.program_failures, 3);
    assert_eq!(s.wall_time_ns, 2 * S);
    assert_eq!(s.map_memory_bytes, 4096);
    // 2 ms of BPF time in 2 s on 2 cores = 0.05 %.
    assert!((s.cpu_overhead_percent().unwrap() - 0.05).abs() < 1e-9);
    // Later calls still measure from the start of the window.
    let again = b.p1("n1", &stats(2_002_000, 5, None), 4 * S, 2).unwrap();
    assert_eq!(
        (again.run_time_ns_delta, again.wall_time_ns),
        (2_001_000, 4 * S)
    );
}

#[test]
fn counters_going_back_mean_a_reload_and_restart_the_window() {
    let mut b = SampleBook::default();
    b.p1("n1", &stats(5000, 9, None), 0, 1);
    assert_eq!(b.p1("n1", &stats(10, 0, None), 3 * S, 1), None);
    let s = b.p1("n1", &stats(110, 1, None), 5 * S, 1).unwrap();
    assert_eq!((s.run_time_ns_delta, s.program_failures), (100, 1));
}

#[test]
fn window_restarts_after_max_window() {
    let mut b = SampleBook::default();
    b.p1("n1", &stats(0, 0, None), 0, 1);
    let s = b.p1("n1", &stats(100, 0, None), 11 * S, 1).unwrap();
    assert_eq!(s.run_time_ns_delta, 100);
    let s = b.p1("n1", &stats(130, 0, None), 13 * S, 1).unwrap();
    assert_eq!((s.run_time_ns_delta, s.wall_time_ns), (30, 2 * S));
}

#[test]
fn http_figures_become_interval_rates_and_p99() {
    let mut b = SampleBook::default();
    b.p1("n1", &stats(0, 0, Some(hist(10, 1, [10, 0, 0, 0]))), 0, 1);
    // 100 more requests: 90 under 10 ms, 10 between 100 ms and 1 s.
    let s = b
        .p1(
            "n1",
            &stats(0, 0, Some(hist(110, 6, [100, 0, 10, 0]))),
            5 * S,
            1,
        )
        .unwrap();
    assert_eq!((s.http_requests, s.http_errors), (100, 5));
    // rank 99 of 100: 9 of the 10 in (0.1, 1] → 0.1 + 0.9 * 0.9 s.
    let p99 = s.p99_latency_ms.unwrap();
    assert!((p99 - 910.0).abs() < 1e-6, "{p99}");
}

#[test]
fn quantile_edges() {
    let z = pb::HttpFigures::default();
    assert_eq!(quantile_ms(&hist(0, 0, [0, 0, 0, 0]), &z, 0.99), None);
    // Everything in +Inf: the last bound is all that can be said.
    assert_eq!(
        quantile_ms(&hist(5, 0, [0, 0, 0, 5]), &z, 0.99),
        Some(1000.0)
    );
    // Malformed (counts do not fit the bounds): no figure, no panic.
    let bad = pb::HttpFigures {
        latency_bounds_seconds: vec![0.1],
        latency_bucket_counts: vec![1],
        ..Default::default()
    };
    assert_eq!(quantile_ms(&bad, &z, 0.99), None);
}

#[test]
fn retain_forgets_unloaded_revisions_of_that_program_only() {
    let mut b = SampleBook::default();
    b.p1("n1", &stats(0, 0, None), 0, 1);
    b.p1("n2", &stats(0, 0, None), 0, 1);
    b.sample("n1", "q", "r1", &stats(0, 0, None), 0, 1);
    b.retain("p", |n, r| (n, r) == ("n2", "r1"));
    assert_eq!(b.len(), 2);
    b.retain("p", |_, _| false);
    b.retain("q", |_, _| false);
    assert!(b.is_empty());
}

#[test]
fn refused_calls_become_failures_and_transport_errors_do_not() {
    let at = time(100);
    let f = failure_of(
        &tonic::Status::invalid_argument("verifier rejected program count: R1 invalid mem access"),
        "r2",
        at.clone(),
    )
    .unwrap();
    assert_eq!(
        (f.reason.as_str(), f.revision.as_str()),
        ("VerifierRejected", "r2")
    );
    assert!(f.message.contains("invalid mem access"));
    let f = failure_of(
        &tonic::Status::permission_denied("sha256 mismatch"),
        "r2",
        at.clone(),
    );
    assert_eq!(f.unwrap().reason, "LoadRefused");
    assert!(
        failure_of(
            &tonic::Status::unavailable("conn refused"),
            "r2",
            at.clone()
        )
        .is_none()
    );
    let long = "x".repeat(5000);
    let f = failure_of(&tonic::Status::internal(long), "r2", at).unwrap();
    assert!(f.message.len() <= MAX_MESSAGE + 3);
}

/// The agent's answer for a registry it cannot pull from, and the
/// attempts the book counts for the retry backoff.
#[test]
fn aborted_means_source_unavailable_and_attempts_count_in_a_row() {
    let unavailable = |at| {
        failure_of(
            &tonic::Status::aborted("source unavailable: r.example answered 401 Unauthorized"),
            "r2",
            time(at),
        )
        .unwrap()
    };
    let f = unavailable(1);
    assert_eq!(f.reason, "SourceUnavailable");
    assert!(f.source_unavailable());
    assert!(f.message.contains("401"));
    let mut book = FailureBook::default();
    book.record("n1", "p", unavailable(1));
    book.record("n1", "p", unavailable(6));
    book.record("n2", "p", unavailable(6));
    let attempts = |b: &FailureBook, node| b.of(node, "p")[0].attempts;
    assert_eq!((attempts(&book, "n1"), attempts(&book, "n2")), (2, 1));
    // Another reason starts again; so does a success.
    let refused = failure_of(
        &tonic::Status::permission_denied("bad signature"),
        "r2",
        time(9),
    );
    book.record("n1", "p", refused.unwrap());
    assert_eq!(attempts(&book, "n1"), 1);
    book.record("n1", "p", unavailable(10));
    assert_eq!(attempts(&book, "n1"), 1);
    book.record("n1", "p", unavailable(15));
    assert_eq!(attempts(&book, "n1"), 2);
    book.clear("n1", "p", "r2");
    book.record("n1", "p", unavailable(20));
    assert_eq!(attempts(&book, "n1"), 1);
}

fn entry(active_revision: &str, states: &[(&str, pb::RevisionState)]) -> pb::ProgramInfo {
    pb::ProgramInfo {
        program: "p".into(),
        active_revision: active_revision.into(),
        revisions: states
            .iter()
            .map(|(r, s)| pb::RevisionInfo {
                revision: (*r).into(),
                state: *s as i32,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Found by the `agent_replies` fuzz target's checks: a List entry whose
/// revision states and `active_revision` disagree made two revisions
/// of one program active in the node's report.
#[test]
fn a_program_has_at_most_one_active_revision() {
    use pb::RevisionState::{Active, Inactive};
    let active = |p: pb::ProgramInfo| {
        let list = pb::ListResponse { programs: vec![p] };
        let view = NodeView::from_answers(&list, &pb::StatsResponse::default());
        let on: Vec<String> = view
            .program("p")
            .iter()
            .filter(|r| r.active)
            .map(|r| r.revision.clone())
            .collect();
        on
    };
    // The agent's own answer: both say r1.
    assert_eq!(
        active(entry("r1", &[("r1", Active), ("r2", Inactive)])),
        ["r1"]
    );
    // They disagree: active_revision wins.
    assert_eq!(
        active(entry("r2", &[("r1", Active), ("r2", Inactive)])),
        ["r2"]
    );
    assert_eq!(
        active(entry("r2", &[("r1", Active), ("r2", Active)])),
        ["r2"]
    );
    // No active_revision: the one ACTIVE state; two of them name none.
    assert_eq!(
        active(entry("", &[("r1", Inactive), ("r2", Active)])),
        ["r2"]
    );
    assert!(active(entry("", &[("r1", Active), ("r2", Active)])).is_empty());
    assert!(active(entry("", &[("r1", Inactive)])).is_empty());
    // Found by libFuzzer: a revision listed twice was active twice.
    assert_eq!(
        active(entry("r1", &[("r1", Active), ("r1", Inactive)])),
        ["r1"]
    );
}

/// Found by the `agent_replies` fuzz target's checks: bucket bounds of -5 s gave
/// a p99 of -5000 ms, which passes any latency gate.
#[test]
fn bounds_no_agent_sends_give_no_quantile() {
    let figures = |bounds: Vec<f64>| pb::HttpFigures {
        requests: 20,
        errors: 0,
        latency_bucket_counts: vec![10; bounds.len() + 1],
        latency_bounds_seconds: bounds,
    };
    let zero = pb::HttpFigures::default();
    let q = |b: Vec<f64>| quantile_ms(&figures(b), &zero, 0.99);
    assert!(q(vec![0.1, 0.5]).is_some_and(|v| v.is_finite() && v >= 0.0));
    for bad in [
        vec![-5.0],
        vec![f64::NAN],
        vec![0.1, f64::INFINITY],
        vec![0.5, 0.1],
        vec![0.1, 0.1],
    ] {
        assert_eq!(q(bad.clone()), None, "{bad:?}");
    }
}

#[test]
fn report_reads_active_state_and_failures() {
    let list = pb::ListResponse {
        programs: vec![pb::ProgramInfo {
            program: "p".into(),
            active_revision: "r1".into(),
            revisions: vec![
                pb::RevisionInfo {
                    revision: "r2".into(),
                    state: pb::RevisionState::Inactive as i32,
                    ..Default::default()
                },
                pb::RevisionInfo {
                    revision: "r1".into(),
                    state: pb::RevisionState::Active as i32,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }],
    };
    let mut fails = FailureBook::default();
    fails.record(
        "n1",
        "p",
        NodeFailure {
            revision: "r3".into(),
            reason: "VerifierRejected".into(),
            message: "m".into(),
            at: time(5),
            attempts: 1,
        },
    );
    let view = NodeView::from_answers(&list, &pb::StatsResponse::default());
    let r = report("n1", "p", &view, &mut SampleBook::default(), &fails, 0, 1);
    assert_eq!(r.active(), Some("r1"));
    assert!(r.has("r2"));
    assert_eq!(
        r.failure("r3").map(|f| f.reason.as_str()),
        Some("VerifierRejected")
    );
    fails.clear("n1", "p", "r3");
    assert!(fails.of("n1", "p").is_empty());
}

fn node(total: u64, softirq: u64, system: u64, agent: u64, rss: u64) -> NodeCounters {
    NodeCounters {
        cpu_total_jiffies: Some(total),
        cpu_softirq_jiffies: Some(softirq),
        cpu_system_jiffies: Some(system),
        cpus: Some(4),
        agent_cpu_jiffies: Some(agent),
        agent_rss_bytes: Some(rss),
        btf: None,
    }
}

#[test]
fn node_figures_are_deltas_over_the_window() {
    let mut b = SampleBook::default();
    let at = |n: NodeCounters| Figures {
        node: Some(n.into()),
        ..stats(1000, 0, None)
    };
    assert_eq!(
        b.p1("n1", &at(node(10_000, 100, 1000, 50, 1 << 20)), 0, 4),
        None
    );
    // 4 CPUs for 2 s at 100 Hz: 800 jiffies, of which 40 softirq (5 %),
    // 200 system (25 %); the agent ran 30 of the 200 a core had (15 %).
    let s = b
        .p1("n1", &at(node(10_800, 140, 1200, 80, 3 << 20)), 2 * S, 4)
        .unwrap();
    let n = s.node.expect("node figures");
    assert_eq!(n.softirq_percent, Some(5.0));
    assert_eq!(n.system_cpu_percent, Some(25.0));
    assert_eq!(n.agent_cpu_percent, Some(15.0));
    assert_eq!(n.agent_rss_bytes, Some(3 << 20), "at the end of the window");
}

#[test]
fn node_figures_missing_or_going_back_give_none_not_zero() {
    let base = node(10_000, 100, 1000, 50, 1 << 20);
    // The agent restarted: its CPU time started again.
    let n = node(10_800, 140, 1200, 5, 1 << 20).since(&base);
    assert_eq!(n.agent_cpu_percent, None);
    assert_eq!(n.softirq_percent, Some(5.0));
    // No CPU time passed: no shares.
    let n = base.since(&base);
    assert_eq!((n.softirq_percent, n.agent_cpu_percent), (None, None));
    // A counter missing at either end.
    let gone = NodeCounters {
        cpu_softirq_jiffies: None,
        ..node(10_800, 140, 1200, 80, 1 << 20)
    };
    assert_eq!(gone.since(&base).softirq_percent, None);
    assert_eq!(base.since(&gone).softirq_percent, None);
    assert_eq!(gone.since(&base).system_cpu_percent, Some(25.0));
    // The window began before the agent sent node figures.
    let mut b = SampleBook::default();
    b.p1("n1", &stats(1000, 0, None), 0, 4);
    let later = Figures {
        node: Some(node(10_800, 140, 1200, 80, 1 << 20).into()),
        ..stats(2000, 0, None)
    };
    assert_eq!(b.p1("n1", &later, 2 * S, 4).unwrap().node, None);
}

#[test]
fn node_figures_go_with_the_active_revision_only() {
    let list = pb::ListResponse {
        programs: vec![pb::ProgramInfo {
            program: "p".into(),
            active_revision: "r2".into(),
            revisions: ["r1", "r2"]
                .iter()
                .map(|r| pb::RevisionInfo {
                    revision: r.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
    };
    let stats_at = |n: NodeCounters| pb::StatsResponse {
        revisions: ["r1", "r2"]
            .iter()
            .map(|r| pb::RevisionStats {
                program: "p".into(),
                revision: r.to_string(),
                ..Default::default()
            })
            .collect(),
        stats_enabled: true,
        node: Some(pb::NodeFigures {
            cpu_total_jiffies: n.cpu_total_jiffies,
            cpu_softirq_jiffies: n.cpu_softirq_jiffies,
            cpu_system_jiffies: n.cpu_system_jiffies,
            cpus: n.cpus,
            agent_cpu_jiffies: n.agent_cpu_jiffies,
            agent_rss_bytes: n.agent_rss_bytes,
            btf_present: n.btf,
        }),
    };
    let (mut samples, failures) = (SampleBook::default(), FailureBook::default());
    for (at, n) in [
        (0, node(10_000, 100, 1000, 50, 1 << 20)),
        (2 * S, node(10_800, 140, 1200, 80, 1 << 20)),
    ] {
        let view = NodeView::from_answers(&list, &stats_at(n));
        let r = report("n1", "p", &view, &mut samples, &failures, at, 4);
        if at == 0 {
            continue;
        }
        let health = |rev: &str| r.sample(rev).cloned().expect("sample");
        assert_eq!(health("r2").node.and_then(|n| n.softirq_percent), Some(5.0));
        assert_eq!(health("r1").node, None, "inactive: no node figures");
    }
}

#[test]
fn node_counters_carry_whether_the_kernel_has_btf() {
    for btf in [Some(true), Some(false), None] {
        let figures = pb::NodeFigures {
            cpu_total_jiffies: Some(10_000),
            btf_present: btf,
            ..Default::default()
        };
        let n = NodeCounters::from(&figures);
        assert_eq!(n.btf, btf);
        assert_eq!(n.cpu_total_jiffies, Some(10_000));
    }
    // Not a counter: a window's figures do not depend on it.
    let base = node(10_000, 100, 1000, 50, 1 << 20);
    let end = node(10_800, 140, 1200, 80, 1 << 20);
    let with_btf = NodeCounters {
        btf: Some(true),
        ..end
    };
    assert_eq!(with_btf.since(&base), end.since(&base));
}

#[test]
fn a_report_says_whether_the_kernel_has_btf_also_where_the_program_is_not_held() {
    // The node holds "other" but nothing of "p" (it refused it): its answer
    // still says whether the kernel has BTF.
    let list = pb::ListResponse {
        programs: vec![pb::ProgramInfo {
            program: "other".into(),
            active_revision: "o1".into(),
            revisions: vec![pb::RevisionInfo {
                revision: "o1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let stats_with = |btf: Option<bool>| pb::StatsResponse {
        revisions: vec![pb::RevisionStats {
            program: "other".into(),
            revision: "o1".into(),
            ..Default::default()
        }],
        stats_enabled: true,
        node: Some(pb::NodeFigures {
            cpus: Some(2),
            btf_present: btf,
            ..Default::default()
        }),
    };
    let (mut samples, failures) = (SampleBook::default(), FailureBook::default());
    let mut btf_of = |stats: &pb::StatsResponse| {
        let view = NodeView::from_answers(&list, stats);
        report("n1", "p", &view, &mut samples, &failures, 0, 2).btf
    };
    assert_eq!(btf_of(&stats_with(Some(true))), Some(true));
    assert_eq!(btf_of(&stats_with(Some(false))), Some(false));
    // The agent did not say, sent no node figures, or holds nothing.
    assert_eq!(btf_of(&stats_with(None)), None);
    let no_node = pb::StatsResponse {
        node: None,
        ..stats_with(Some(true))
    };
    assert_eq!(btf_of(&no_node), None);
    let view = NodeView::default();
    assert_eq!(
        report("n1", "p", &view, &mut samples, &failures, 0, 2).btf,
        None
    );
    assert_eq!(unreachable("n1").btf, None);
    // A node holding no program at all (the first rollout, refused) says
    // it through the answer's own node figures.
    let empty = NodeView::from_answers(
        &pb::ListResponse::default(),
        &pb::StatsResponse {
            revisions: vec![],
            ..stats_with(Some(false))
        },
    );
    assert_eq!(
        report("n1", "p", &empty, &mut samples, &failures, 0, 2).btf,
        Some(false)
    );
}
