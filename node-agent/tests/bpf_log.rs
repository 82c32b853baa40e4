//! Structured logs from BPF programs, against the real kernel and the
//! agent as a process: a program that logs (`syscount_chatty`, which logs
//! every getppid of one thread through `bpfleet_log.h`) has its record
//! printed by the agent as one JSON line on stdout naming program,
//! revision, node, level, message id and fields; a flood meets the
//! in-kernel rate limit (a bounded number of lines, the rest counted as
//! `rate_limited` in /metrics, printed + dropped = calls); the node's log
//! ring is one pin shared by the programs that log and goes with the last
//! of them; `--no-bpf-log` prints nothing. Nothing stays loaded or pinned.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bpfleet_bpf as objs;
use bpfleet_proto::v1 as pb;
use bpfleet_testsupport::agent::AgentProcess;
use bpfleet_testsupport::http::get;
use bpfleet_testsupport::metrics::{parse, sum};
use common::*;
use serde_json::Value;

/// `BPFLEET_LOG_RATE` of syscount_chatty (its burst is the same).
const RATE: u64 = 5;
/// The message id syscount_chatty logs.
const MSG: u64 = 7;

struct Agent {
    proc: AgentProcess,
    stdout: PathBuf,
    stderr: PathBuf,
    metrics: u16,
    rt: tokio::runtime::Runtime,
}

impl Agent {
    fn start(root: &PinRoot, extra: &[&str]) -> Self {
        let metrics = free_port();
        let stdout = root.scratch.path().join("stdout.log");
        let stderr = root.scratch.path().join("stderr.log");
        let listen = format!("127.0.0.1:{metrics}");
        let mut args = vec![
            "--allow-unsigned",
            "--node-name",
            "log-node",
            "--metrics-listen",
            &listen,
        ];
        args.extend_from_slice(extra);
        let proc = AgentProcess::start_split(
            Path::new(env!("CARGO_BIN_EXE_bpfleet-agent")),
            &root.files(),
            &args,
            &stdout,
            &stderr,
        );
        Self {
            proc,
            stdout,
            stderr,
            metrics,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn client(&self) -> pb::agent_client::AgentClient<tonic::transport::Channel> {
        let socket = self.proc.socket.clone();
        self.rt
            .block_on(bpfleet_agent::cli::connect_unix(socket))
            .unwrap()
    }

    /// Loads `obj` as `program/revision` on getppid, activates it and
    /// points it at this thread; its revision token.
    fn load_on_this_thread(&self, program: &str, revision: &str, obj: &[u8]) -> u64 {
        let mut c = self.client();
        let mut req = syscount(revision, obj);
        req.program = program.into();
        let r = self.rt.block_on(c.load(req)).unwrap().into_inner();
        self.rt
            .block_on(c.activate(pb::ActivateRequest {
                program: program.into(),
                revision: revision.into(),
            }))
            .unwrap();
        self.rt
            .block_on(c.update_config(only_thread(program, gettid())))
            .unwrap();
        r.revision.unwrap().revision_token
    }

    fn unload(&self, program: &str) {
        let mut c = self.client();
        self.rt
            .block_on(c.unload(pb::UnloadRequest {
                program: program.into(),
                revision: String::new(),
            }))
            .unwrap();
    }

    fn prog_ids(&self) -> Vec<u32> {
        let mut c = self.client();
        let list = self
            .rt
            .block_on(c.list(pb::ListRequest::default()))
            .unwrap()
            .into_inner();
        list.programs
            .iter()
            .flat_map(|p| &p.revisions)
            .flat_map(|r| r.prog_ids.clone())
            .collect()
    }

    fn shared_pins(&self, program: &str) -> Vec<String> {
        let mut c = self.client();
        let list = self
            .rt
            .block_on(c.list(pb::ListRequest {
                program: program.into(),
            }))
            .unwrap()
            .into_inner();
        list.programs[0].shared_pins.clone()
    }

    /// Every stdout line, each parsed as JSON (a line that is not one
    /// fails the test: stdout carries nothing else).
    fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.stdout).unwrap();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "stdout ends inside a line: {text:?}"
        );
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {l:?}"))
            })
            .collect()
    }

    /// The lines of `program`'s message [`MSG`], waiting up to 5 s for at
    /// least `n`.
    fn wait_lines(&self, program: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got: Vec<Value> = self
                .lines()
                .into_iter()
                .filter(|l| l["program"] == program && l["msg_id"] == MSG)
                .collect();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, body) = get(self.metrics, "/metrics");
        assert_eq!(status, 200, "{body}");
        sum(&parse(&body), name, labels)
    }
}

fn bpftool_has_prog(id: u32) -> bool {
    std::process::Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn records_become_json_lines_and_a_flood_meets_the_rate_limit() {
    let root = PinRoot::new("bpflog");
    let ring = root.path.join("_bpfleet_log");
    let agent = Agent::start(&root, &[]);
    assert!(!ring.exists(), "no program logs yet, no ring");

    let token = agent.load_on_this_thread("syscount", "c1", objs::SYSCOUNT_CHATTY);
    assert!(ring.exists(), "the first program that logs makes the ring");
    // A second program that logs (on its failure path only) shares it.
    agent.load_on_this_thread("second", "v2", objs::SYSCOUNT_V2);
    let pin = ring.display().to_string();
    assert!(agent.shared_pins("syscount").contains(&pin));
    assert!(agent.shared_pins("second").contains(&pin));
    let ids = agent.prog_ids();
    assert!(ids.iter().all(|id| bpftool_has_prog(*id)));

    // Before any record, every level of a revision that logs is a series
    // at 0 (a dashboard's rate is 0, not "no data").
    let (_, body) = get(agent.metrics, "/metrics");
    for level in ["error", "warn", "info", "debug"] {
        let series = format!(
            "bpfleet_bpf_log_records_total{{program=\"syscount\",revision=\"c1\",level=\"{level}\"}} 0"
        );
        assert!(body.contains(&series), "{series} missing:\n{body}");
    }

    // One call, one line.
    getppid_n(1);
    let lines = agent.wait_lines("syscount", 1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["level"], "warn");
    assert_eq!(l["source"], "bpf");
    assert_eq!(l["node"], "log-node");
    assert_eq!(l["program"], "syscount");
    assert_eq!(l["revision"], "c1");
    assert_eq!(l["msg_id"], MSG);
    assert_eq!(l["token"], token);
    // Fields: the thread id and the count so far.
    assert_eq!(l["fields"], serde_json::json!([gettid(), 1]));
    let ts = l["ts"].as_str().unwrap();
    assert!(ts.len() == 27 && ts.ends_with('Z'), "{ts}");
    assert_eq!(
        agent.metric(
            "bpfleet_bpf_log_records_total",
            &[
                ("program", "syscount"),
                ("revision", "c1"),
                ("level", "warn")
            ]
        ),
        1.0
    );

    // A flood of two seconds: the bucket holds RATE records per CPU and
    // refills RATE a second per CPU.
    let cpus = std::thread::available_parallelism().unwrap().get() as u64;
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < Duration::from_secs(2) {
        getppid_n(1000);
        calls += 1000;
    }
    let secs = started.elapsed().as_secs_f64().ceil() as u64;
    let bound = cpus * RATE * (1 + secs);
    std::thread::sleep(Duration::from_millis(500));
    let lines = agent.wait_lines("syscount", 2);
    let flood = lines.len() as u64 - 1;
    eprintln!("flood: {calls} calls in {secs} s on {cpus} CPUs, {flood} lines (bound {bound})");
    assert!(
        flood >= 1 && flood <= bound,
        "{flood} lines for {calls} calls in {secs} s on {cpus} CPUs; at most {bound} allowed"
    );
    let limited = agent.metric(
        "bpfleet_bpf_log_dropped_total",
        &[
            ("program", "syscount"),
            ("revision", "c1"),
            ("reason", "rate_limited"),
        ],
    ) as u64;
    let full = agent.metric(
        "bpfleet_bpf_log_dropped_total",
        &[
            ("program", "syscount"),
            ("revision", "c1"),
            ("reason", "ring_full"),
        ],
    ) as u64;
    let printed = agent.metric(
        "bpfleet_bpf_log_records_total",
        &[("program", "syscount"), ("revision", "c1")],
    ) as u64;
    assert!(limited > 0, "nothing counted as rate limited");
    assert_eq!(full, 0);
    assert_eq!(printed, lines.len() as u64);
    assert_eq!(
        printed + limited,
        calls + 1,
        "every call is a line or a drop"
    );
    // The program without a failure logged nothing.
    assert!(agent.lines().iter().all(|l| l["program"] == "syscount"));
    // The agent's own logs are on stderr.
    let stderr = std::fs::read_to_string(&agent.stderr).unwrap();
    assert!(
        stderr.contains("reading the node's BPF log ring"),
        "{stderr}"
    );

    // The ring stays while a program uses it, and goes with the last.
    agent.unload("syscount");
    assert!(ring.exists());
    agent.unload("second");
    assert!(!ring.exists(), "the ring outlived its last program");
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
    for id in ids {
        assert!(!prog_exists(id), "program {id} still loaded");
    }
}

#[test]
fn no_bpf_log_prints_nothing() {
    let root = PinRoot::new("bpflog-off");
    let ring = root.path.join("_bpfleet_log");
    let agent = Agent::start(&root, &["--no-bpf-log"]);
    agent.load_on_this_thread("syscount", "c1", objs::SYSCOUNT_CHATTY);
    assert!(ring.exists(), "the ring is made either way");
    getppid_n(3);
    std::thread::sleep(Duration::from_millis(600));
    assert!(agent.lines().is_empty(), "{:?}", agent.lines());
    let ids = agent.prog_ids();
    agent.unload("syscount");
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
    for id in ids {
        assert!(!prog_exists(id), "program {id} still loaded");
    }
}

#[test]
fn after_a_restart_records_are_named_and_the_ring_is_known_again() {
    let root = PinRoot::new("bpflog-restart");
    let ring = root.path.join("_bpfleet_log");
    let mut agent = Agent::start(&root, &[]);
    let token = agent.load_on_this_thread("syscount", "c1", objs::SYSCOUNT_CHATTY);
    let ids = agent.prog_ids();
    agent.proc.kill9();

    // With its state file, then (lost) from the pins alone: the program
    // still logs through the same ring, the new agent reads it, names
    // the records (the origin is computed from the names again) and
    // lists the ring with the program.
    for lose_state in [false, true] {
        if lose_state {
            std::fs::remove_file(root.state_file()).unwrap();
        }
        agent = Agent::start(&root, &[]);
        assert!(ring.exists());
        let pin = ring.display().to_string();
        assert!(
            agent.shared_pins("syscount").contains(&pin),
            "lost state {lose_state}: {:?}",
            agent.shared_pins("syscount")
        );
        std::thread::sleep(Duration::from_millis(1200));
        getppid_n(1);
        let lines = agent.wait_lines("syscount", 1);
        assert_eq!(lines.len(), 1, "lost state {lose_state}: {lines:?}");
        assert_eq!(lines[0]["revision"], "c1");
        assert_eq!(lines[0]["token"], token);
        if !lose_state {
            agent.proc.kill9();
        }
    }
    agent.unload("syscount");
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
    for id in ids {
        assert!(!prog_exists(id), "program {id} still loaded");
    }
}
