//! A simulated fleet for the scenario and property tests: nodes whose
//! agents carry out the machine's actions (load, activate, roll back,
//! unload) the way the real agent does, report per-revision health figures
//! chosen by the test, and a fake clock. Every call of the machine is also
//! checked for idempotence: calling again with the status it just returned
//! and the same reports must give the same status, the same actions and no
//! events.
#![allow(dead_code)] // each test crate uses a different part of the fleet

use std::collections::{BTreeMap, BTreeSet};

use bpfleet_api::TracerProgramSpec;
use bpfleet_api::TracerProgramStatus;
use bpfleet_api::policy::HealthGates;
use bpfleet_api::program::{
    AnalysisStep, BlueGreenStrategy, BytecodeSource, CanaryStep, CanaryStrategy, FailurePolicy,
    FileSource, ImmediateStrategy, PauseStep, ProgramEntry, Strategy,
};
use bpfleet_operator::gates::{HealthSample, NodeSample};
use bpfleet_operator::revision::revision_id;
use bpfleet_operator::rollout::clock::time;
use bpfleet_operator::rollout::{
    ActionKind, Command, CommandKind, Event, Input, LoadedRevision, NodeAction, NodeFailure,
    NodeReport, Output, Requests, reconcile,
};

pub const PROGRAM: &str = "http-tracer";
pub const T0: i64 = 1_800_000_000;

/// A spec whose content (and so revision) is named by `content`.
pub fn spec(content: &str, strategy: Strategy) -> TracerProgramSpec {
    TracerProgramSpec {
        version: content.to_string(),
        bytecode: BytecodeSource {
            file: Some(FileSource {
                path: format!("/var/lib/bpfleet/{content}.bpf.o"),
            }),
            ..Default::default()
        },
        sha256: "ab".repeat(32),
        signature: None,
        programs: vec![ProgramEntry::tracepoint(
            "trace_write",
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

pub fn immediate() -> Strategy {
    Strategy {
        immediate: Some(ImmediateStrategy {}),
        canary: None,
        blue_green: None,
        verify_first: None,
    }
}

pub fn canary(max_unavailable: i32, steps: Vec<CanaryStep>) -> Strategy {
    Strategy {
        immediate: None,
        canary: Some(CanaryStrategy {
            steps,
            max_unavailable,
        }),
        blue_green: None,
        verify_first: None,
    }
}

pub fn blue_green(bg: BlueGreenStrategy) -> Strategy {
    Strategy {
        immediate: None,
        canary: None,
        blue_green: Some(bg),
        verify_first: None,
    }
}

fn step() -> CanaryStep {
    CanaryStep {
        set_node_percent: None,
        pause: None,
        analysis: None,
    }
}

pub fn percent(p: i32) -> CanaryStep {
    CanaryStep {
        set_node_percent: Some(p),
        ..step()
    }
}

pub fn pause(duration: Option<&str>) -> CanaryStep {
    CanaryStep {
        pause: Some(PauseStep {
            duration: duration.map(str::to_string),
        }),
        ..step()
    }
}

pub fn window(duration: i32, interval: i32) -> AnalysisStep {
    AnalysisStep {
        duration_seconds: duration,
        interval_seconds: interval,
        policy_ref: None,
    }
}

pub fn analysis(duration: i32, interval: i32) -> CanaryStep {
    CanaryStep {
        analysis: Some(window(duration, interval)),
        ..step()
    }
}

/// Figures of a revision serving traffic: `requests` per sample with
/// `errors` of them failing and the given p99.
pub fn traffic(requests: u64, errors: u64, p99_ms: f64) -> HealthSample {
    HealthSample {
        program_failures: 0,
        run_time_ns_delta: 10_000_000,
        // 500 ns per run.
        run_count_delta: 20_000,
        events_lost: Some(0),
        wall_time_ns: 10_000_000_000,
        cpu_cores: 4,
        map_memory_bytes: 1 << 20,
        http_requests: requests,
        http_errors: errors,
        p99_latency_ms: Some(p99_ms),
        node: None,
    }
}

/// One simulated node.
#[derive(Clone, Debug, Default)]
pub struct SimNode {
    pub loaded: BTreeSet<String>,
    pub active: Option<String>,
    pub failures: Vec<NodeFailure>,
    pub reachable: bool,
    /// The agent answers but carries out nothing.
    pub stuck: bool,
    /// Kernel release the Node reports.
    pub kernel: Option<String>,
    /// Revisions this node's kernel refuses (`VerifierRejected`).
    pub refuses: BTreeSet<String>,
}

/// The fleet, the object and the clock.
pub struct Fleet {
    pub spec: TracerProgramSpec,
    pub status: TracerProgramStatus,
    pub generation: i64,
    pub nodes: BTreeMap<String, SimNode>,
    pub departed: BTreeMap<String, SimNode>,
    pub gates: HealthGates,
    pub requests: Requests,
    pub now: i64,
    /// Every event emitted so far.
    pub events: Vec<Event>,
    /// Health each revision reports while active (default: healthy traffic).
    pub health: BTreeMap<String, HealthSample>,
    /// Node figures each node reports with the revision it runs active
    /// (default: none, as from an agent that sends no node figures).
    pub node_health: BTreeMap<String, NodeSample>,
    /// Revisions whose load fails, with the reason.
    pub broken: BTreeMap<String, String>,
    /// Serialize the status to JSON and back between calls (a restart).
    pub restart_every_call: bool,
    next_request: u32,
}

impl Fleet {
    pub fn new(nodes: usize, spec: TracerProgramSpec) -> Fleet {
        let mut fleet = Fleet {
            spec,
            status: TracerProgramStatus::default(),
            generation: 1,
            nodes: BTreeMap::new(),
            departed: BTreeMap::new(),
            gates: HealthGates::default(),
            requests: Requests::default(),
            now: T0,
            events: Vec::new(),
            health: BTreeMap::new(),
            node_health: BTreeMap::new(),
            broken: BTreeMap::new(),
            restart_every_call: false,
            next_request: 0,
        };
        for i in 0..nodes {
            fleet.join(&format!("node-{i:02}"));
        }
        fleet
    }

    pub fn join(&mut self, name: &str) {
        let node = self.departed.remove(name).unwrap_or_default();
        self.nodes.insert(
            name.to_string(),
            SimNode {
                reachable: true,
                ..node
            },
        );
    }

    pub fn leave(&mut self, name: &str) {
        if let Some(n) = self.nodes.remove(name) {
            self.departed.insert(name.to_string(), n);
        }
    }

    /// Changes the spec the way `kubectl apply` does.
    pub fn apply(&mut self, spec: TracerProgramSpec) {
        self.spec = spec;
        self.generation += 1;
    }

    pub fn revision(&self) -> String {
        revision_id(&self.spec).expect("revision id")
    }

    pub fn command(&mut self, kind: CommandKind) {
        self.next_request += 1;
        // Like annotations: one pending request per kind, the newest.
        let same = std::mem::discriminant(&kind);
        self.requests
            .commands
            .retain(|c| std::mem::discriminant(&c.kind) != same);
        self.requests.commands.push(Command {
            id: format!("req-{}", self.next_request),
            kind,
        });
    }

    fn report(&self, name: &str, node: &SimNode) -> NodeReport {
        NodeReport {
            node: name.to_string(),
            reachable: node.reachable,
            revisions: node
                .loaded
                .iter()
                .map(|r| {
                    let active = node.active.as_deref() == Some(r.as_str());
                    let health = if active {
                        self.health
                            .get(r)
                            .cloned()
                            .unwrap_or(traffic(1000, 10, 20.0))
                    } else {
                        traffic(0, 0, 0.0)
                    };
                    LoadedRevision {
                        revision: r.clone(),
                        active,
                        health: Some(HealthSample {
                            p99_latency_ms: health.p99_latency_ms.filter(|_| active),
                            node: if active {
                                self.node_health.get(name).cloned().or(health.node.clone())
                            } else {
                                None
                            },
                            ..health
                        }),
                    }
                })
                .collect(),
            failures: node.failures.clone(),
            kernel: node.kernel.clone(),
            btf: None,
            map_memory_bytes: None,
        }
    }

    pub fn reports(&self) -> (Vec<NodeReport>, Vec<NodeReport>) {
        let selected = self.nodes.iter().map(|(n, s)| self.report(n, s)).collect();
        let departed = self
            .departed
            .iter()
            .filter(|(_, s)| !s.loaded.is_empty())
            .map(|(n, s)| self.report(n, s))
            .collect();
        (selected, departed)
    }

    /// Runs the machine once at the current time, without applying anything.
    pub fn decide(&self, status: &TracerProgramStatus) -> Output {
        let (nodes, departed) = self.reports();
        let input = Input {
            program: PROGRAM,
            generation: self.generation,
            spec: &self.spec,
            status,
            source_commit: Some("0123abc"),
            nodes: &nodes,
            departed: &departed,
            gates: &self.gates,
            requests: &self.requests,
            now: time(self.now),
        };
        reconcile(&input).expect("reconcile")
    }

    /// Advances the clock by `seconds`, runs the machine, checks it is a
    /// fixed point, and lets the agents carry out the actions.
    pub fn tick(&mut self, seconds: i64) -> Output {
        self.now += seconds;
        let status = if self.restart_every_call {
            let json = serde_json::to_string(&self.status).expect("status to json");
            serde_json::from_str(&json).expect("status from json")
        } else {
            self.status.clone()
        };
        let out = self.decide(&status);
        let again = self.decide(&out.status);
        assert_eq!(again.status, out.status, "recomputing changed the status");
        assert_eq!(
            again.actions, out.actions,
            "recomputing changed the actions"
        );
        assert!(
            again.events.is_empty(),
            "recomputing emitted {:?}",
            again.events
        );
        self.carry_out(&out.actions);
        self.status = out.status.clone();
        self.events.extend(out.events.iter().cloned());
        out
    }

    /// Ticks until nothing is left to do or `max` calls were made.
    pub fn settle(&mut self, seconds: i64, max: usize) -> Output {
        let mut out = self.tick(seconds);
        for _ in 1..max {
            if out.actions.is_empty() {
                break;
            }
            out = self.tick(seconds);
        }
        out
    }

    pub fn carry_out(&mut self, actions: &[NodeAction]) {
        for a in actions {
            let node = match self.nodes.get_mut(&a.node) {
                Some(n) => n,
                None => self
                    .departed
                    .get_mut(&a.node)
                    .expect("action for a known node"),
            };
            let broken = self.broken.get(&a.revision).cloned().or_else(|| {
                node.refuses
                    .contains(&a.revision)
                    .then(|| "VerifierRejected".to_string())
            });
            if node.stuck {
                continue;
            }
            match a.kind {
                ActionKind::Load => match broken {
                    Some(reason) => {
                        node.failures.retain(|f| f.revision != a.revision);
                        node.failures.push(NodeFailure {
                            revision: a.revision.clone(),
                            reason,
                            message: "the verifier refused the program".into(),
                            at: time(self.now),
                            attempts: 1,
                        });
                    }
                    None => {
                        node.failures.retain(|f| f.revision != a.revision);
                        node.loaded.insert(a.revision.clone());
                    }
                },
                ActionKind::Activate | ActionKind::Rollback => {
                    if node.loaded.contains(&a.revision) {
                        node.active = Some(a.revision.clone());
                    }
                }
                ActionKind::Unload => {
                    node.loaded.remove(&a.revision);
                    node.failures.retain(|f| f.revision != a.revision);
                    if node.active.as_deref() == Some(a.revision.as_str()) {
                        node.active = None;
                    }
                }
            }
        }
    }

    /// Nodes with `revision` active.
    pub fn running(&self, revision: &str) -> usize {
        self.nodes
            .values()
            .filter(|n| n.active.as_deref() == Some(revision))
            .count()
    }

    /// Nodes with `revision` loaded.
    pub fn loaded(&self, revision: &str) -> usize {
        self.nodes
            .values()
            .filter(|n| n.loaded.contains(revision))
            .count()
    }

    pub fn event_count(&self, reason: &str) -> usize {
        self.events.iter().filter(|e| e.reason == reason).count()
    }

    pub fn condition(&self, kind: &str) -> String {
        self.status
            .conditions
            .iter()
            .find(|c| c.type_ == kind)
            .map(|c| c.status.clone())
            .unwrap_or_default()
    }
}
