//! Target `agent_replies`: the bytes node agents send back to the
//! operator, decoded with prost as tonic decodes them, and everything the
//! operator's pure code makes of them, over a few reconcile rounds:
//!
//! - `List` and `Stats` replies (what the operator's cache asks every agent,
//!   `bpfleet_operator::agents::agent_fetch`) into a
//!   [`NodeView`] (`NodeView::from_answers`), then per program a
//!   `NodeReport` with health samples as deltas of the agent's cumulative
//!   counters (`observe::report`, [`SampleBook`]);
//! - the error status of an action (Load, Activate, Rollback, Unload:
//!   their success bodies are empty messages the operator drops) into a
//!   node failure (`observe::failure_of`, [`FailureBook`]), as the
//!   controller's `carry_out` does;
//! - the reports into the rollout machine (`rollout::reconcile`): a canary
//!   of a second revision with an analysis step whose gates read the
//!   samples, so the reports reach the node counts, the failing nodes,
//!   the analysis gates and the status text.
//!
//! A reply that does not decode is what tonic reports as an `Internal`
//! status: the operator's fetch gives up on the node (unreachable), and
//! the harness does the same and checks the machine does not count it.
//!
//! Input layout: one byte (bits 0-1: nodes - 1; bits 2-4: CPU cores - 1),
//! then rounds (at most [`MAX_ROUNDS`]), each 20 s after the last plus
//! one byte of extra seconds, then per node: a tag byte (bit 0: the node
//! answered List and Stats, bit 1: an action was refused, bit 2: that
//! action was for the stable revision rather than the candidate), then
//! for bit 0 the `ListResponse` and `StatsResponse` encodings, for bit 1
//! a status code byte and the message. Every byte run is a little-endian
//! `u16` length and the bytes. [`Round`] writes it.
//!
//! What must hold whatever the bytes: no panic or overflow; the view is
//! sorted by program without repeats and names only programs and
//! revisions of the `List` reply, with figures only from the `Stats`
//! reply; a report of a reply has at most one active revision; a health
//! sample's deltas are within the counters it came from and its p99 is a
//! finite, non-negative number; a refused call is a failure with a known
//! reason and a message of at most `MAX_MESSAGE` bytes (plus the
//! ellipsis); the machine's node counts are within the nodes given, the
//! nodes whose reply did not decode are neither updated nor ready, every
//! failing node and action names a node given, the status text is
//! bounded, and an analysis gate that passed measured a finite figure.

use std::sync::LazyLock;

use bpfleet_api::TracerProgramSpec;
use bpfleet_api::TracerProgramStatus;
use bpfleet_api::policy::{HealthGates, NoDataPolicy};
use bpfleet_api::program::{
    AnalysisStep, BytecodeSource, CanaryStep, CanaryStrategy, FailurePolicy, FileSource,
    ImmediateStrategy, ProgramEntry, Strategy,
};
use bpfleet_operator::gates::HealthSample;
use bpfleet_operator::observe::{self, FailureBook, MAX_MESSAGE, NodeView, SampleBook};
use bpfleet_operator::revision::revision_id;
use bpfleet_operator::rollout::{self, Input, NodeReport, Requests, clock};
use bpfleet_proto::v1 as pb;
use prost::Message;

use crate::Reader;

/// The program the rollout is about.
pub const PROGRAM: &str = "traced";
pub const MAX_ROUNDS: usize = 6;
/// Longest status text accepted from the machine (message, node summary,
/// a failing node's message, a gate's texts).
pub const MAX_TEXT: usize = 4096;
/// The first round's clock (seconds since the epoch).
const T0: i64 = 1_800_000_000;

/// Tag bits of one node in one round.
pub const ANSWERED: u8 = 1;
pub const REFUSED: u8 = 1 << 1;
pub const FOR_STABLE: u8 = 1 << 2;

fn spec(content: &str, strategy: Strategy) -> TracerProgramSpec {
    TracerProgramSpec {
        version: "1.0.0".into(),
        bytecode: BytecodeSource {
            file: Some(FileSource {
                path: format!("/var/lib/bpfleet/{content}.bpf.o"),
            }),
            ..Default::default()
        },
        sha256: format!("{:0>64}", content.len()),
        signature: None,
        programs: vec![ProgramEntry::tracepoint(
            "count",
            "syscalls",
            "sys_enter_write",
        )],
        persistent_maps: vec![],
        recreate_incompatible_maps: vec![],
        node_selector: None,
        strategy,
        progress_deadline_seconds: 600,
        failure_policy: FailurePolicy::Rollback,
        revision_history_limit: 10,
        paused: false,
    }
}

/// The stable spec (immediate) and the candidate (a canary: half the
/// nodes, an analysis of 30 s measured every 10 s, then all).
struct World {
    stable: TracerProgramSpec,
    candidate: TracerProgramSpec,
    stable_rev: String,
    candidate_rev: String,
    gates: HealthGates,
    /// The status once every node runs the stable revision, per node count.
    settled: Vec<TracerProgramStatus>,
}

fn world() -> &'static World {
    static WORLD: LazyLock<World> = LazyLock::new(build_world);
    &WORLD
}

fn build_world() -> World {
    let none = Strategy {
        immediate: None,
        canary: None,
        blue_green: None,
        verify_first: None,
    };
    let stable = spec(
        "stable",
        Strategy {
            immediate: Some(ImmediateStrategy {}),
            ..none.clone()
        },
    );
    let step = |p: Option<i32>, a: Option<AnalysisStep>| CanaryStep {
        set_node_percent: p,
        pause: None,
        analysis: a,
    };
    let candidate = spec(
        "candidate",
        Strategy {
            canary: Some(CanaryStrategy {
                steps: vec![
                    step(Some(50), None),
                    step(
                        None,
                        Some(AnalysisStep {
                            duration_seconds: 30,
                            interval_seconds: 10,
                            policy_ref: None,
                        }),
                    ),
                    step(Some(100), None),
                ],
                max_unavailable: 1,
            }),
            ..none
        },
    );
    let (Ok(stable_rev), Ok(candidate_rev)) = (revision_id(&stable), revision_id(&candidate))
    else {
        panic!("the fixed specs have revisions");
    };
    let gates = HealthGates {
        max_program_failures: 0,
        max_cpu_overhead_percent: Some(5.0),
        max_map_memory: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
            "64Mi".into(),
        )),
        max_error_rate_ratio: Some(1.5),
        max_p99_latency_ratio: Some(1.5),
        max_run_time_ratio: Some(1.5),
        max_events_lost: Some(0),
        max_node_softirq_percent: Some(5.0),
        max_node_system_cpu_percent: Some(50.0),
        max_agent_cpu_percent: Some(50.0),
        max_agent_rss_mib: Some(256),
        min_samples: 1,
        consecutive_failure_limit: 2,
        no_data: NoDataPolicy::default(),
    };
    let settled = (1..=4)
        .map(|n| {
            let reports: Vec<NodeReport> = (0..n)
                .map(|i| {
                    let mut r = NodeReport::new(node_name(i));
                    r.revisions.push(rollout::LoadedRevision {
                        revision: stable_rev.clone(),
                        active: true,
                        health: None,
                    });
                    r
                })
                .collect();
            let mut status = TracerProgramStatus::default();
            for round in 0..3 {
                let input = Input {
                    program: PROGRAM,
                    generation: 1,
                    spec: &stable,
                    status: &status,
                    source_commit: None,
                    nodes: &reports,
                    departed: &[],
                    gates: &gates,
                    requests: &Requests::default(),
                    now: clock::time(T0 - 100 + round),
                };
                match rollout::reconcile(&input) {
                    Ok(out) => status = out.status,
                    Err(e) => panic!("the stable rollout: {e}"),
                }
            }
            status
        })
        .collect();
    World {
        stable,
        candidate,
        stable_rev,
        candidate_rev,
        gates,
        settled,
    }
}

/// The stable and candidate revisions' ids (the seeds name them).
pub fn revisions() -> (String, String) {
    let w = world();
    (w.stable_rev.clone(), w.candidate_rev.clone())
}

pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// One node's part of a round.
#[derive(Clone, Debug, Default)]
pub struct NodeReply {
    /// `List` and `Stats` replies as bytes; None: no answer.
    pub answer: Option<(Vec<u8>, Vec<u8>)>,
    /// A refused action: code, message, for the stable revision.
    pub refused: Option<(u8, Vec<u8>, bool)>,
}

impl NodeReply {
    pub fn answered(list: &pb::ListResponse, stats: &pb::StatsResponse) -> Self {
        NodeReply {
            answer: Some((list.encode_to_vec(), stats.encode_to_vec())),
            refused: None,
        }
    }
}

/// One round: extra seconds after the usual 20, and each node's replies.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub extra_seconds: u8,
    pub nodes: Vec<NodeReply>,
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&bytes[..usize::from(n)]);
}

/// An input of this target: `nodes` (1..=4) and `cores` (1..=8) and the
/// rounds, each with one reply per node.
pub fn input(nodes: u8, cores: u8, rounds: &[Round]) -> Vec<u8> {
    let mut v = vec![(nodes.clamp(1, 4) - 1) | ((cores.clamp(1, 8) - 1) << 2)];
    for r in rounds {
        v.push(r.extra_seconds);
        for n in &r.nodes {
            let mut tag = 0;
            if n.answer.is_some() {
                tag |= ANSWERED;
            }
            if let Some((_, _, stable)) = &n.refused {
                tag |= REFUSED;
                if *stable {
                    tag |= FOR_STABLE;
                }
            }
            v.push(tag);
            if let Some((list, stats)) = &n.answer {
                put(&mut v, list);
                put(&mut v, stats);
            }
            if let Some((code, msg, _)) = &n.refused {
                v.push(*code);
                put(&mut v, msg);
            }
        }
    }
    v
}

fn run_bytes<'a>(r: &mut Reader<'a>) -> Option<&'a [u8]> {
    let n = r.u16()?;
    Some(r.up_to(usize::from(n)))
}

/// How far one input got, for the seed tests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reached {
    pub rounds: usize,
    /// Replies that did not decode.
    pub garbage: usize,
    /// Health samples computed.
    pub samples: usize,
    /// Failures recorded from refused calls.
    pub failures: usize,
    /// Analysis results the machine wrote.
    pub analyses: usize,
    /// The last status's phase and counts.
    pub status: Option<TracerProgramStatus>,
}

/// Runs one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    reach(data);
}

/// Runs one input and says how far it got.
pub fn reach(data: &[u8]) -> Reached {
    let w = world();
    let mut reached = Reached::default();
    let mut r = Reader::new(data);
    let Some(head) = r.u8() else {
        return reached;
    };
    let n_nodes = usize::from(head & 3) + 1;
    let cores = u32::from((head >> 2) & 7) + 1;
    let names: Vec<String> = (0..n_nodes).map(node_name).collect();
    let mut status = w.settled[n_nodes - 1].clone();
    let mut samples = SampleBook::default();
    let mut failures = FailureBook::default();
    let mut now = T0;

    'rounds: for _ in 0..MAX_ROUNDS {
        let Some(extra) = r.u8() else { break };
        now += 20 + i64::from(extra);
        let at = clock::time(now);
        let at_ns = u64::try_from(now).unwrap_or(0) * 1_000_000_000;
        let mut reports = Vec::with_capacity(n_nodes);
        let mut undecoded = Vec::new();
        for node in &names {
            let Some(tag) = r.u8() else { break 'rounds };
            let mut answer = None;
            if tag & ANSWERED != 0 {
                let (Some(list), Some(stats)) = (run_bytes(&mut r), run_bytes(&mut r)) else {
                    break 'rounds;
                };
                answer = Some((list, stats));
            }
            if tag & REFUSED != 0 {
                let (Some(code), Some(msg)) = (r.u8(), run_bytes(&mut r)) else {
                    break 'rounds;
                };
                let revision = if tag & FOR_STABLE != 0 {
                    &w.stable_rev
                } else {
                    &w.candidate_rev
                };
                if refused(&mut failures, node, revision, code, msg, at.clone()) {
                    reached.failures += 1;
                }
            }
            let report = match answer {
                None => observe::unreachable(node),
                Some((list, stats)) => {
                    match (
                        pb::ListResponse::decode(list),
                        pb::StatsResponse::decode(stats),
                    ) {
                        (Ok(list), Ok(stats)) => {
                            let view = NodeView::from_answers(&list, &stats);
                            check_view(&view, &list, &stats);
                            let report = observe::report(
                                node,
                                PROGRAM,
                                &view,
                                &mut samples,
                                &failures,
                                at_ns,
                                cores,
                            );
                            reached.samples += check_report(&report, &view);
                            report
                        }
                        // tonic answers a reply it cannot decode with an
                        // Internal status: the fetch gives up on the node.
                        _ => {
                            reached.garbage += 1;
                            undecoded.push(node.clone());
                            observe::unreachable(node)
                        }
                    }
                }
            };
            reports.push(report);
        }
        let input = Input {
            program: PROGRAM,
            generation: 2,
            spec: &w.candidate,
            status: &status,
            source_commit: None,
            nodes: &reports,
            departed: &[],
            gates: &w.gates,
            requests: &Requests::default(),
            now: at,
        };
        let out = match rollout::reconcile(&input) {
            Ok(out) => out,
            Err(e) => panic!("the machine refused its input: {e}"),
        };
        check_output(&out, &names, &reports, &undecoded);
        if out.status.last_analysis.is_some() {
            reached.analyses += 1;
        }
        status = out.status;
        samples.retain(PROGRAM, |node, rev| {
            reports
                .iter()
                .any(|r| r.node == node && r.revisions.iter().any(|l| l.revision == rev))
        });
        reached.rounds += 1;
    }
    // The stable spec is used for the settled status only; keep it read.
    debug_assert!(!w.stable.version.is_empty());
    reached.status = Some(status);
    reached
}

/// A refused call as the controller records it; true when recorded.
fn refused(
    failures: &mut FailureBook,
    node: &str,
    revision: &str,
    code: u8,
    msg: &[u8],
    at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> bool {
    let code = tonic::Code::from_i32(i32::from(code));
    let msg = String::from_utf8_lossy(msg);
    let status = tonic::Status::new(code, msg.as_ref());
    match observe::failure_of(&status, revision, at) {
        None => {
            assert!(
                matches!(
                    code,
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                ),
                "{code:?} taken for an unreachable agent"
            );
            false
        }
        Some(f) => {
            assert_eq!(f.revision, revision);
            assert!(!f.reason.is_empty());
            assert!(
                f.message.len() <= MAX_MESSAGE + '…'.len_utf8(),
                "a failure message of {} bytes",
                f.message.len()
            );
            let kept = f.message.strip_suffix('…').unwrap_or(&f.message);
            assert!(msg.starts_with(kept), "the message was changed");
            failures.record(node, PROGRAM, f);
            true
        }
    }
}

fn check_view(view: &NodeView, list: &pb::ListResponse, stats: &pb::StatsResponse) {
    for pair in view.programs.windows(2) {
        assert!(
            pair[0].program < pair[1].program,
            "programs not sorted or repeated"
        );
    }
    for p in &view.programs {
        let Some(listed) = list.programs.iter().find(|l| l.program == p.program) else {
            panic!("program {:?} is not in the List reply", p.program);
        };
        let mut names: Vec<&str> = listed
            .revisions
            .iter()
            .map(|r| r.revision.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(p.revisions.len(), names.len(), "revisions lost or repeated");
        for pair in p.revisions.windows(2) {
            assert!(
                pair[0].revision < pair[1].revision,
                "revisions not sorted or repeated"
            );
        }
        for r in &p.revisions {
            assert!(
                listed.revisions.iter().any(|l| l.revision == r.revision),
                "revision {:?} of {:?} is not in the List reply",
                r.revision,
                p.program
            );
            if let Some(f) = &r.figures {
                assert!(
                    stats.revisions.iter().any(|s| s.program == p.program
                        && s.revision == r.revision
                        && s.run_time_ns == f.run_time_ns
                        && s.program_errors == f.program_errors
                        && s.events_lost == f.events_lost
                        && s.map_memory_bytes == f.map_memory_bytes),
                    "figures of {:?} not from the Stats reply",
                    r.revision
                );
            }
        }
        assert!(
            p.revisions.iter().filter(|r| r.active).count() <= 1,
            "{:?}: more than one active revision",
            p.program
        );
    }
}

/// Checks a reachable node's report; returns how many samples it holds.
fn check_report(report: &NodeReport, view: &NodeView) -> usize {
    assert!(report.reachable);
    let held = view.program(PROGRAM);
    assert_eq!(report.revisions.len(), held.len());
    assert!(report.revisions.iter().filter(|r| r.active).count() <= 1);
    let mut n = 0;
    for (r, v) in report.revisions.iter().zip(held) {
        assert_eq!(r.revision, v.revision);
        let Some(s) = &r.health else { continue };
        let Some(f) = &v.figures else {
            panic!("a sample of {:?} without figures", r.revision);
        };
        check_sample(s, f);
        // Node figures go with the active revision only, and only from
        // node figures the agent sent.
        assert!(
            s.node.is_none() || (r.active && f.node.is_some()),
            "node figures on {:?} (active: {}, sent: {:?})",
            r.revision,
            r.active,
            f.node
        );
        n += 1;
    }
    n
}

fn check_sample(s: &HealthSample, f: &observe::Figures) {
    assert!(s.program_failures <= f.program_errors);
    assert!(s.run_time_ns_delta <= f.run_time_ns);
    assert!(s.run_count_delta <= f.run_count);
    // A loss count only where the agent sent one, never above it.
    match (s.events_lost, f.events_lost) {
        (Some(lost), Some(total)) => assert!(lost <= total),
        (None, None) => {}
        (s, f) => panic!("events lost {s:?} in the sample, {f:?} reported"),
    }
    assert_eq!(s.map_memory_bytes, f.map_memory_bytes);
    if let Some(h) = &f.http {
        assert!(s.http_requests <= h.requests);
        assert!(s.http_errors <= h.errors);
    } else {
        assert_eq!((s.http_requests, s.http_errors), (0, 0));
    }
    if let Some(p99) = s.p99_latency_ms {
        assert!(
            p99.is_finite() && p99 >= 0.0,
            "p99 of {p99} ms from bounds {:?}",
            f.http.as_ref().map(|h| &h.latency_bounds_seconds)
        );
    }
    if let Some(cpu) = s.cpu_overhead_percent() {
        assert!(cpu.is_finite() && cpu >= 0.0);
    }
    if let Some(n) = &s.node {
        // Shares of counters that went forward: finite, never negative
        // (never a NaN, which a gate would read as a pass).
        for p in [n.softirq_percent, n.system_cpu_percent, n.agent_cpu_percent]
            .into_iter()
            .flatten()
        {
            assert!(
                p.is_finite() && p >= 0.0,
                "node figure {p} from {:?}",
                f.node
            );
        }
    }
}

fn check_output(
    out: &rollout::Output,
    names: &[String],
    reports: &[NodeReport],
    undecoded: &[String],
) {
    let s = &out.status;
    let n = i32::try_from(names.len()).unwrap_or(i32::MAX);
    let c = &s.nodes;
    assert_eq!(c.desired, n, "desired nodes");
    for (what, v) in [
        ("updated", c.updated),
        ("ready", c.ready),
        ("failed", c.failed),
    ] {
        assert!((0..=n).contains(&v), "{what} {v} of {n} nodes");
    }
    let answered = reports.iter().filter(|r| r.reachable).count();
    let answered = i32::try_from(answered).unwrap_or(i32::MAX);
    assert!(
        c.updated <= answered && c.ready <= answered,
        "{} updated, {} ready, {answered} nodes answered ({} replies did not decode)",
        c.updated,
        c.ready,
        undecoded.len()
    );
    assert!(s.failing_nodes.len() <= names.len());
    for f in &s.failing_nodes {
        assert!(names.contains(&f.node), "failing node {:?}", f.node);
        assert!(f.message.len() <= MAX_TEXT, "{} bytes", f.message.len());
        assert!(f.reason.len() <= MAX_TEXT);
    }
    for f in &s.failing_nodes {
        if undecoded.contains(&f.node) {
            // A garbage reply is not a healthy node.
            assert!(!f.reason.is_empty());
        }
    }
    for text in [&s.message, &s.node_summary, &s.current_step]
        .into_iter()
        .flatten()
    {
        assert!(
            text.len() <= MAX_TEXT,
            "a status text of {} bytes",
            text.len()
        );
    }
    for a in &out.actions {
        assert!(names.contains(&a.node), "an action for {:?}", a.node);
        let reported = reports
            .iter()
            .any(|r| r.node == a.node && r.has(&a.revision));
        let w = world();
        assert!(
            reported || a.revision == w.stable_rev || a.revision == w.candidate_rev,
            "an action on revision {:?}, neither known nor reported",
            a.revision
        );
    }
    for e in &out.events {
        assert!(
            e.message.len() <= MAX_TEXT,
            "an event of {} bytes",
            e.message.len()
        );
    }
    if let Some(a) = &s.last_analysis {
        for g in &a.gates {
            assert!(g.measured.len() <= MAX_TEXT && g.threshold.len() <= MAX_TEXT);
            if g.passed {
                let m = g.measured.to_ascii_lowercase();
                assert!(
                    !m.contains("nan") && !m.contains("inf") && !m.starts_with('-'),
                    "gate {} passed on {:?}",
                    g.gate,
                    g.measured
                );
            }
        }
    }
}
