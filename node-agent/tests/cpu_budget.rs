//! CPU budgets enforced by the real agent process on this kernel: a
//! program that burns cycles on every event it keeps (syscount_burner,
//! sampled on slot 8) is driven with getppid(2) from a busy thread, gets
//! a budget by UpdateConfig, and must have its sampling halved step by
//! step while over budget and doubled back to the requested value when
//! the load stops; every change is in List, the audit log and the metrics.
//! A program that does not declare sampling (syscount_costly) under the
//! same budget is reported `cannot_sample` and its slot 8 is never
//! written.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bpfleet_bpf as objs;
use bpfleet_proto::v1::{self as pb, CpuBudgetState, HookKind};
use bpfleet_testsupport::{http, metrics};
use common::*;

const SAMPLE_SLOT: u32 = 8;

fn load(program: &str, obj: &[u8]) -> pb::LoadRequest {
    load_req(
        program,
        "v1",
        obj,
        vec![entry("count_getppid", HookKind::Tracepoint, GETPPID_TP)],
        &["counts"],
    )
}

fn budget(program: &str, max: f64) -> pb::UpdateConfigRequest {
    pb::UpdateConfigRequest {
        program: program.into(),
        cpu_budget: Some(pb::CpuBudget {
            max_cpu_percent: max,
            reduce_sampling: true,
            policy: "budget-test".into(),
        }),
        ..Default::default()
    }
}

/// getppid(2) in a loop on a thread of its own until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                getppid_n(1000);
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn status(
    c: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
    program: &str,
) -> (pb::CpuBudgetStatus, Vec<u64>) {
    let p = c
        .list(pb::ListRequest {
            program: program.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .programs
        .remove(0);
    (p.cpu_budget.expect("a budget is reported"), p.config)
}

fn audit_lines(root: &PinRoot, program: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(root.audit_log())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["action"] == "cpu_budget" && l["program"] == program)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burner_over_budget_is_cut_step_by_step_and_restored_costly_is_reported() {
    let root = PinRoot::new("cpubudget");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // Tracepoints only: no network namespace needed, and the metrics
    // listener stays reachable on the host's loopback.
    let agent = AgentProc::start(
        &root,
        None,
        &[
            "--allow-unsigned",
            "--metrics-listen",
            &listen,
            "--budget-period-seconds",
            "1",
            "--sampling-floor-ppm",
            "1000",
        ],
    );
    let mut c = agent.client().await;
    for (program, obj) in [
        ("burner", objs::SYSCOUNT_BURNER),
        ("costly", objs::SYSCOUNT_COSTLY),
    ] {
        c.load(load(program, obj)).await.unwrap();
        c.activate(pb::ActivateRequest {
            program: program.into(),
            revision: "v1".into(),
        })
        .await
        .unwrap();
    }
    let burner_cfg = root.path.join("burner/_map_bpfleet_config");
    let costly_cfg = root.path.join("costly/_map_bpfleet_config");
    // The operator's sampling: all for the burner (0), half for costly
    // (which ignores it).
    c.update_config(slots_write("costly", &[(SAMPLE_SLOT, 500_000)]))
        .await
        .unwrap();
    // 3 % of the node: far below what the burner takes at full sampling
    // on a busy thread, above what it takes at the floor.
    c.update_config(budget("burner", 3.0)).await.unwrap();
    c.update_config(budget("costly", 3.0)).await.unwrap();
    let (b, _) = status(&mut c, "burner").await;
    assert_eq!(b.requested_sampling_ppm, 0);
    assert!(b.samples, "the burner declares sampling");
    assert!(!status(&mut c, "costly").await.0.samples);

    // Over budget: the share kept halves every period until the burner is
    // within budget (or at the floor).
    let load = Load::start();
    let mut seen: Vec<(u64, Option<f64>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let settled = loop {
        assert!(Instant::now() < deadline, "never settled: {seen:?}");
        let (b, config) = status(&mut c, "burner").await;
        assert_eq!(
            config[SAMPLE_SLOT as usize], b.sampling_ppm,
            "List's slot 8 is the map's"
        );
        if seen.last().map(|s| s.0) != Some(b.sampling_ppm) {
            seen.push((b.sampling_ppm, b.measured_cpu_percent));
        }
        let state = CpuBudgetState::try_from(b.state).unwrap();
        // Settled: held for three periods at a cut, within budget or at
        // the floor.
        let within = b
            .measured_cpu_percent
            .is_some_and(|m| m <= b.max_cpu_percent);
        let cut = state == CpuBudgetState::AtFloor || (state == CpuBudgetState::Reduced && within);
        if cut && seen.len() >= 2 {
            let since = b.changed_at_unix_ms;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let (again, _) = status(&mut c, "burner").await;
            if again.sampling_ppm == b.sampling_ppm && again.changed_at_unix_ms == since {
                break again;
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    let cuts: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(cuts[0], 0, "starts at the request: {seen:?}");
    assert!(cuts.len() >= 3, "more than one step: {seen:?}");
    // Each value in force is half the one before (0 is all: 1,000,000).
    let mut before = 1_000_000;
    for &ppm in &cuts[1..] {
        assert_eq!(ppm, (before / 2).max(1000), "halved step by step: {seen:?}");
        before = ppm;
    }
    assert_eq!(slot(&burner_cfg, SAMPLE_SLOT), settled.sampling_ppm);
    // The measured share fell with the sampling.
    let first = seen[1].1.expect("measured before the first cut");
    let last = settled.measured_cpu_percent.unwrap();
    assert!(
        first > settled.max_cpu_percent && last < first / 4.0,
        "CPU share {first} % at full sampling, {last} % at {} ppm ({seen:?})",
        settled.sampling_ppm
    );
    eprintln!(
        "burner: {first:.2} % of the node at full sampling, {last:.3} % at {} ppm; steps {cuts:?}",
        settled.sampling_ppm
    );

    // costly is over the same budget, cannot sample, and keeps the
    // operator's 500000 in slot 8.
    let (k, _) = status(&mut c, "costly").await;
    assert_eq!(
        CpuBudgetState::try_from(k.state).unwrap(),
        CpuBudgetState::CannotSample,
        "{k:?}"
    );
    assert!(k.measured_cpu_percent.unwrap() > 3.0, "{k:?}");
    assert_eq!(
        (k.sampling_ppm, k.requested_sampling_ppm),
        (500_000, 500_000)
    );
    assert_eq!(slot(&costly_cfg, SAMPLE_SLOT), 500_000);

    // A new request from the operator while the cut holds: recorded, the
    // cut (lower) stays in force.
    c.update_config(slots_write("burner", &[(SAMPLE_SLOT, 800_000)]))
        .await
        .unwrap();
    let (b, _) = status(&mut c, "burner").await;
    assert_eq!(b.requested_sampling_ppm, 800_000);
    assert_eq!(b.sampling_ppm, settled.sampling_ppm);
    assert_eq!(slot(&burner_cfg, SAMPLE_SLOT), settled.sampling_ppm);

    // Audit lines and metrics for every step.
    let reduces = audit_lines(&root, "burner")
        .iter()
        .filter(|l| {
            l["actor"] == "agent"
                && l["detail"]
                    .as_str()
                    .unwrap()
                    .starts_with("reduce sampling ")
        })
        .count();
    assert_eq!(reduces, cuts.len() - 1, "one audit line per cut");
    assert!(
        audit_lines(&root, "costly")
            .iter()
            .any(|l| l["detail"].as_str().unwrap().contains("-> cannot_sample")),
        "{:?}",
        audit_lines(&root, "costly")
    );
    let (code, text) = http::get(port, "/metrics");
    assert_eq!(code, 200);
    let m = metrics::parse(&text);
    let burner = [("program", "burner")];
    assert_eq!(
        metrics::sum(
            &m,
            "bpfleet_agent_budget_enforcements_total",
            &[("program", "burner"), ("action", "reduce")]
        ),
        (cuts.len() - 1) as f64
    );
    assert_eq!(
        metrics::sum(&m, "bpfleet_agent_sampling_ppm", &burner),
        settled.sampling_ppm as f64
    );
    assert!(
        metrics::sum(
            &m,
            "bpfleet_agent_program_cpu_percent",
            &[("program", "costly")]
        ) > 3.0
    );
    assert!(
        !text.contains("bpfleet_agent_sampling_ppm{program=\"costly\"}"),
        "costly does not sample"
    );

    // The load stops: doubled back each period up to the new request.
    drop(load);
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut up = vec![settled.sampling_ppm];
    loop {
        assert!(Instant::now() < deadline, "never restored: {up:?}");
        let (b, _) = status(&mut c, "burner").await;
        if up.last() != Some(&b.sampling_ppm) {
            up.push(b.sampling_ppm);
        }
        if CpuBudgetState::try_from(b.state).unwrap() == CpuBudgetState::Within {
            assert_eq!(b.sampling_ppm, 800_000, "{up:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for w in up.windows(2) {
        assert_eq!(
            w[1],
            (w[0] * 2).min(800_000),
            "doubled step by step: {up:?}"
        );
    }
    assert_eq!(slot(&burner_cfg, SAMPLE_SLOT), 800_000);
    let restores = audit_lines(&root, "burner")
        .iter()
        .filter(|l| {
            l["detail"]
                .as_str()
                .unwrap()
                .starts_with("restore sampling ")
        })
        .count();
    assert_eq!(restores, up.len() - 1);
    let (_, text) = http::get(port, "/metrics");
    assert_eq!(
        metrics::sum(
            &metrics::parse(&text),
            "bpfleet_agent_budget_enforcements_total",
            &[("program", "burner"), ("action", "restore")]
        ),
        (up.len() - 1) as f64
    );
    // costly, idle now, is within budget; its slot 8 untouched throughout.
    let deadline = Instant::now() + Duration::from_secs(10);
    while CpuBudgetState::try_from(status(&mut c, "costly").await.0.state).unwrap()
        != CpuBudgetState::Within
    {
        assert!(Instant::now() < deadline, "costly never within budget");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(slot(&costly_cfg, SAMPLE_SLOT), 500_000);

    // The budget removed: no longer reported.
    c.update_config(budget("burner", 0.0)).await.unwrap();
    let p = c
        .list(pb::ListRequest {
            program: "burner".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .programs
        .remove(0);
    assert!(p.cpu_budget.is_none());
    for program in ["burner", "costly"] {
        c.unload(pb::UnloadRequest {
            program: program.into(),
            revision: String::new(),
        })
        .await
        .unwrap();
    }
    assert!(root.pins().is_empty(), "{:?}", root.pins());
}

/// A budget that is not a percentage is refused, naming the field, and
/// nothing is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_that_is_not_a_percentage_is_refused() {
    let root = PinRoot::new("cpubudgetbad");
    let agent = AgentProc::start(&root, None, &["--allow-unsigned"]);
    let mut c = agent.client().await;
    c.load(load("burner", objs::SYSCOUNT_BURNER)).await.unwrap();
    for bad in [-1.0, 250.0, f64::NAN] {
        let e = c.update_config(budget("burner", bad)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains("cpu_budget.max_cpu_percent"), "{e}");
    }
    let p = c
        .list(pb::ListRequest {
            program: "burner".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .programs
        .remove(0);
    assert!(p.cpu_budget.is_none());
    c.unload(pb::UnloadRequest {
        program: "burner".into(),
        revision: String::new(),
    })
    .await
    .unwrap();
}
