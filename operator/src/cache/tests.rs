//! The cache against an agent fleet in memory: sharing, coalescing, the
//! fan-out bound, and above all that an action is never followed by a
//! view from before it (which would make the machine send it again).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bpfleet_api::TracerProgramStatus;
use bpfleet_api::policy::HealthGates;
use futures::FutureExt;
use tokio::sync::Semaphore;

use super::{Fetch, NodeCache};
use crate::observe::{self, FailureBook, NodeView, ProgramView, RevisionView, SampleBook};
use crate::rollout::clock::time;
use crate::rollout::testing::{canary, percent, spec};
use crate::rollout::{ActionKind, Input, NodeAction, NodeReport, Requests};

/// What one agent holds: program → (loaded revisions, active one).
type Held = HashMap<String, (Vec<String>, Option<String>)>;

/// Agents in memory, by node.
#[derive(Default)]
struct Fleet {
    nodes: Mutex<HashMap<String, Held>>,
    calls: AtomicUsize,
    running: AtomicUsize,
    most_running: AtomicUsize,
    /// When set, every call waits for a permit of it first.
    gate: Mutex<Option<Arc<Semaphore>>>,
    /// When set, every call waits until the test releases it by its
    /// arrival index ([`Fleet::release`]), so answers come in any order.
    held: Mutex<Option<Vec<Arc<Semaphore>>>>,
    /// Calls about one program alone.
    scoped_calls: AtomicUsize,
}

impl Fleet {
    fn with_nodes(n: usize) -> Arc<Self> {
        let f = Fleet::default();
        {
            let mut nodes = f.nodes.lock().expect("lock");
            for i in 0..n {
                nodes.insert(format!("n{i}"), HashMap::new());
            }
        }
        Arc::new(f)
    }

    fn view(&self, node: &str) -> Option<NodeView> {
        let nodes = self.nodes.lock().expect("lock");
        let progs = nodes.get(node)?;
        let mut programs: Vec<ProgramView> = progs
            .iter()
            .map(|(p, (loaded, active))| ProgramView {
                program: p.clone(),
                config_stamp: 0,
                cpu_budget: None,
                revisions: loaded
                    .iter()
                    .map(|r| RevisionView {
                        revision: r.clone(),
                        active: active.as_deref() == Some(r.as_str()),
                        figures: None,
                    })
                    .collect(),
                firing_alerts: Vec::new(),
            })
            .collect();
        programs.sort_by(|a, b| a.program.cmp(&b.program));
        Some(NodeView {
            programs,
            node: None,
        })
    }

    fn fetch(self: &Arc<Self>) -> Fetch {
        let fleet = self.clone();
        Arc::new(
            move |node: String, _endpoint: String, scope: Option<String>| {
                let fleet = fleet.clone();
                async move {
                    fleet.calls.fetch_add(1, Ordering::SeqCst);
                    if scope.is_some() {
                        fleet.scoped_calls.fetch_add(1, Ordering::SeqCst);
                    }
                    let now = fleet.running.fetch_add(1, Ordering::SeqCst) + 1;
                    fleet.most_running.fetch_max(now, Ordering::SeqCst);
                    let gate = fleet.gate.lock().expect("lock").clone();
                    if let Some(g) = gate {
                        // One permit lets one call through.
                        g.acquire().await.expect("gate").forget();
                    }
                    let held = fleet.held.lock().expect("lock").as_mut().map(|h| {
                        let s = Arc::new(Semaphore::new(0));
                        h.push(s.clone());
                        s
                    });
                    if let Some(h) = held {
                        h.acquire().await.expect("held").forget();
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    // The answer is what the agent holds when it answers.
                    let mut v = fleet.view(&node);
                    if let (Some(v), Some(p)) = (v.as_mut(), scope) {
                        v.programs.retain(|x| x.program == p);
                    }
                    fleet.running.fetch_sub(1, Ordering::SeqCst);
                    v
                }
                .boxed()
            },
        )
    }

    /// Lets the `i`th held call (in arrival order) answer.
    fn release(&self, i: usize) {
        let h = self.held.lock().expect("lock");
        h.as_ref().expect("holding")[i].add_permits(1);
    }

    fn held(&self) -> usize {
        self.held.lock().expect("lock").as_ref().map_or(0, Vec::len)
    }

    fn scoped(&self) -> usize {
        self.scoped_calls.load(Ordering::SeqCst)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Carries out an action as an agent would.
    fn apply(&self, program: &str, a: &NodeAction) {
        let mut nodes = self.nodes.lock().expect("lock");
        let Some(progs) = nodes.get_mut(&a.node) else {
            return;
        };
        let p = progs.entry(program.to_string()).or_default();
        match a.kind {
            ActionKind::Load => {
                if !p.0.contains(&a.revision) {
                    p.0.push(a.revision.clone());
                    p.0.sort();
                }
            }
            ActionKind::Activate | ActionKind::Rollback => p.1 = Some(a.revision.clone()),
            ActionKind::Unload => {
                p.0.retain(|r| *r != a.revision);
                if p.1.as_deref() == Some(a.revision.as_str()) {
                    p.1 = None;
                }
            }
        }
    }

    fn set(&self, node: &str, program: &str, loaded: &[&str], active: Option<&str>) {
        let mut nodes = self.nodes.lock().expect("lock");
        let progs = nodes.entry(node.to_string()).or_default();
        progs.insert(
            program.to_string(),
            (
                loaded.iter().map(|s| s.to_string()).collect(),
                active.map(str::to_string),
            ),
        );
    }
}

fn names(n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("n{i}"), format!("unix:///run/n{i}.sock")))
        .collect()
}

fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

fn active_of(cache_view: &super::Sighting, program: &str) -> Option<String> {
    let view = cache_view.view.as_ref()?;
    view.program(program)
        .iter()
        .find(|r| r.active)
        .map(|r| r.revision.clone())
}

const LONG: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn one_call_per_node_serves_every_program() {
    let fleet = Fleet::with_nodes(50);
    let cache = NodeCache::new(LONG, 8, fleet.fetch());
    let nodes = names(50);
    for program in ["a", "b", "c"] {
        let seen = cache.observe(program, &refs(&nodes)).await;
        assert_eq!(seen.len(), 50);
        assert!(seen.iter().all(|s| s.view.is_some()));
    }
    assert_eq!(fleet.calls(), 50);
    assert_eq!(cache.len(), 50);
}

#[tokio::test]
async fn concurrent_reconciles_wait_for_the_same_call_and_fanout_is_bounded() {
    let fleet = Fleet::with_nodes(40);
    let cache = NodeCache::new(LONG, 4, fleet.fetch());
    let nodes = names(40);
    let asked = refs(&nodes);
    let (a, b) = tokio::join!(cache.observe("a", &asked), cache.observe("b", &asked));
    assert_eq!((a.len(), b.len()), (40, 40));
    assert_eq!(fleet.calls(), 40, "each node asked once");
    assert!(fleet.most_running.load(Ordering::SeqCst) <= 4);
}

#[tokio::test]
async fn an_action_makes_that_program_ask_again_and_only_that_program() {
    let fleet = Fleet::with_nodes(3);
    let cache = NodeCache::new(LONG, 8, fleet.fetch());
    let nodes = names(3);
    cache.observe("a", &refs(&nodes)).await;
    cache.observe("b", &refs(&nodes)).await;
    assert_eq!(fleet.calls(), 3);

    // "a" activates r1 on n1.
    fleet.set("n1", "a", &["r1"], Some("r1"));
    cache.acted("n1", "a");

    let seen = cache.observe("a", &refs(&nodes)).await;
    assert_eq!(fleet.calls(), 4, "only n1 is asked again");
    assert_eq!(fleet.scoped(), 1, "and only about \"a\"");
    assert_eq!(active_of(&seen[1], "a").as_deref(), Some("r1"));
    let one = seen[1].view.as_ref().expect("answered");
    assert!(one.program("b").is_empty() && one.programs.len() == 1);
    // Asked again, "a" is served that answer.
    cache.observe("a", &refs(&nodes)).await;
    assert_eq!(fleet.calls(), 4);
    // "b" did not act: its view of n1 stays the answer of every program.
    let seen = cache.observe("b", &refs(&nodes)).await;
    assert_eq!(fleet.calls(), 4);
    assert_eq!(active_of(&seen[1], "a"), None);
}

/// After an action its program asks about itself alone even when the
/// node's answer of every program has expired; another program's look
/// then asks about every program.
// The clock is paused: sleeps end in order, whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn an_action_after_the_answers_expired_still_asks_about_its_program_alone() {
    let fleet = Fleet::with_nodes(1);
    let cache = NodeCache::new(Duration::from_millis(50), 8, fleet.fetch());
    let nodes = names(1);
    cache.observe("a", &refs(&nodes)).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    fleet.set("n0", "a", &["r1"], Some("r1"));
    cache.acted("n0", "a");
    let seen = cache.observe("a", &refs(&nodes)).await;
    assert_eq!((fleet.calls(), fleet.scoped()), (2, 1));
    assert_eq!(active_of(&seen[0], "a").as_deref(), Some("r1"));
    let seen = cache.observe("b", &refs(&nodes)).await;
    assert_eq!((fleet.calls(), fleet.scoped()), (3, 1));
    assert_eq!(active_of(&seen[0], "a").as_deref(), Some("r1"));
    // That answer is newer than the action: "a" may use it too.
    tokio::time::sleep(Duration::from_millis(60)).await;
    cache.observe("b", &refs(&nodes)).await;
    let seen = cache.observe("a", &refs(&nodes)).await;
    assert_eq!((fleet.calls(), fleet.scoped()), (4, 1));
    assert_eq!(active_of(&seen[0], "a").as_deref(), Some("r1"));
}

/// Once the look after an action has been answered and has expired, a
/// node whose answers of every program are shared settles back to one call
/// for every program: programs that all acted once do not each keep asking
/// about themselves.
// The clock is paused: sleeps end in order, whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn after_the_first_look_a_node_settles_back_to_one_call_for_all() {
    let fleet = Fleet::with_nodes(1);
    let max_age = Duration::from_millis(50);
    let cache = NodeCache::new(max_age, 8, fleet.fetch());
    let nodes = names(1);
    for p in ["a", "b", "c"] {
        cache.observe(p, &refs(&nodes)).await;
    }
    assert_eq!(fleet.calls(), 1, "one answer served three looks");
    for p in ["a", "b", "c"] {
        fleet.set("n0", p, &["r1"], Some("r1"));
        cache.acted("n0", p);
        cache.observe(p, &refs(&nodes)).await;
    }
    // Shared calls: "a" and "b" ask about every program; the call "b"
    // started served only "b", so "c" asks about itself alone.
    assert_eq!((fleet.calls(), fleet.scoped()), (4, 1));
    tokio::time::sleep(max_age + Duration::from_millis(20)).await;
    for p in ["a", "b", "c"] {
        let seen = cache.observe(p, &refs(&nodes)).await;
        assert_eq!(active_of(&seen[0], p).as_deref(), Some("r1"));
    }
    assert_eq!(
        (fleet.calls(), fleet.scoped()),
        (5, 1),
        "one call about every program served all three"
    );
}

/// When the node's answers of every program serve no other program (each
/// program comes by alone, acting each time: a fleet rolling all of its
/// programs out), a program whose action was seen keeps asking about
/// itself alone rather than decoding every program's answer for itself.
// The clock is paused: sleeps end in order, whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn unshared_answers_of_every_program_are_not_asked_for_again() {
    let fleet = Fleet::with_nodes(1);
    let max_age = Duration::from_millis(50);
    let cache = NodeCache::new(max_age, 8, fleet.fetch());
    let nodes = names(1);
    cache.observe("a", &refs(&nodes)).await;
    fleet.set("n0", "a", &["r1"], Some("r1"));
    cache.acted("n0", "a");
    cache.observe("a", &refs(&nodes)).await;
    assert_eq!((fleet.calls(), fleet.scoped()), (2, 1));
    tokio::time::sleep(max_age + Duration::from_millis(20)).await;
    let seen = cache.observe("a", &refs(&nodes)).await;
    assert_eq!((fleet.calls(), fleet.scoped()), (3, 2));
    assert_eq!(active_of(&seen[0], "a").as_deref(), Some("r1"));
    assert_eq!(seen[0].view.as_ref().map(|v| v.programs.len()), Some(1));
}

/// An answer of every program asked before an action can arrive after the
/// answer about the acted program alone; it never serves that program,
/// not even once the newer answer has expired and it has not.
// The clock is paused: sleeps end in order, whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn a_late_answer_of_every_program_never_serves_the_program_acted_on() {
    let fleet = Fleet::with_nodes(1);
    *fleet.held.lock().expect("lock") = Some(Vec::new());
    let max_age = Duration::from_millis(400);
    let cache = NodeCache::new(max_age, 8, fleet.fetch());
    let nodes = names(1);
    let look = |program: &'static str| {
        let (cache, nodes) = (cache.clone(), nodes.clone());
        tokio::spawn(async move { cache.observe(program, &refs(&nodes)).await })
    };
    let settle = || tokio::time::sleep(Duration::from_millis(20));

    // Call 0 (every program) answers, and expires; "c" looks, and starts
    // call 1 (every program).
    let first = look("a");
    settle().await;
    fleet.release(0);
    first.await.expect("first");
    tokio::time::sleep(max_age).await;
    let c = look("c");
    settle().await;
    // "a" acts (r1 active) and looks: call 1 started before the action,
    // so "a" asks about itself alone (call 2).
    fleet.set("n0", "a", &["r1"], Some("r1"));
    cache.acted("n0", "a");
    let a = look("a");
    settle().await;
    assert_eq!((fleet.held(), fleet.scoped()), (3, 1));
    fleet.release(2);
    let a = a.await.expect("a");
    assert_eq!(active_of(&a[0], "a").as_deref(), Some("r1"));
    // Call 1 answers last, with what the agent held before the action (a
    // slow answer), and becomes the node's newest answer of every program.
    tokio::time::sleep(max_age / 2).await;
    fleet.set("n0", "a", &[], None);
    fleet.release(1);
    c.await.expect("c");
    fleet.set("n0", "a", &["r1"], Some("r1"));
    // Within max_age "a" is served its own answer.
    let again = cache.observe("a", &refs(&nodes)).await;
    assert_eq!(active_of(&again[0], "a").as_deref(), Some("r1"));
    // Once that has expired (call 1 has not), "a" asks again.
    tokio::time::sleep(max_age / 2 + Duration::from_millis(40)).await;
    let later = look("a");
    settle().await;
    assert_eq!(fleet.held(), 4, "asked again, not served call 1");
    fleet.release(3);
    let later = later.await.expect("later");
    assert_eq!(active_of(&later[0], "a").as_deref(), Some("r1"));
}

// The clock is paused: sleeps end in order, whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn a_call_that_started_before_the_action_is_not_its_answer() {
    let fleet = Fleet::with_nodes(1);
    let gate = Arc::new(Semaphore::new(0));
    *fleet.gate.lock().expect("lock") = Some(gate.clone());
    let cache = NodeCache::new(LONG, 8, fleet.fetch());
    let nodes = names(1);

    // "b" asks; the call is held inside the agent.
    let early = {
        let (cache, nodes) = (cache.clone(), nodes.clone());
        tokio::spawn(async move { cache.observe("b", &refs(&nodes)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(fleet.calls(), 1);

    // Meanwhile "a" loads and activates r1, and then looks.
    fleet.set("n0", "a", &["r1"], Some("r1"));
    cache.acted("n0", "a");
    let late = {
        let (cache, nodes) = (cache.clone(), nodes.clone());
        tokio::spawn(async move { cache.observe("a", &refs(&nodes)).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(fleet.calls(), 2, "a call of its own, not the one in flight");

    // The agent answers the early call with what it held before the
    // action had reached it (a slow answer), then the late one.
    fleet.set("n0", "a", &[], None);
    gate.add_permits(1);
    let early = early.await.expect("early");
    assert_eq!(active_of(&early[0], "a"), None);
    fleet.set("n0", "a", &["r1"], Some("r1"));
    gate.add_permits(1);
    let late = late.await.expect("late");
    assert_eq!(active_of(&late[0], "a").as_deref(), Some("r1"));

    // Either order of answers leaves the newer one in the cache.
    let again = cache.observe("a", &refs(&nodes)).await;
    assert_eq!(fleet.calls(), 2);
    assert_eq!(active_of(&again[0], "a").as_deref(), Some("r1"));
}

// The clock is paused: sleeps end in order, whatever the machine's load.
#[tokio::test(start_paused = true)]
async fn answers_expire_and_a_moved_agent_is_asked_anew() {
    let fleet = Fleet::with_nodes(2);
    let cache = NodeCache::new(Duration::from_millis(50), 8, fleet.fetch());
    let nodes = names(2);
    cache.observe("a", &refs(&nodes)).await;
    cache.observe("a", &refs(&nodes)).await;
    assert_eq!(fleet.calls(), 2);
    tokio::time::sleep(Duration::from_millis(80)).await;
    cache.observe("a", &refs(&nodes)).await;
    assert_eq!(fleet.calls(), 4);
    let moved = vec![
        nodes[0].clone(),
        (nodes[1].0.clone(), "unix:///run/elsewhere.sock".to_string()),
    ];
    cache.observe("a", &refs(&moved)).await;
    assert_eq!(fleet.calls(), 5);
}

#[tokio::test]
async fn silence_is_remembered_like_an_answer() {
    let fleet = Fleet::with_nodes(0);
    let cache = NodeCache::new(LONG, 8, fleet.fetch());
    let nodes = names(2);
    let seen = cache.observe("a", &refs(&nodes)).await;
    assert!(seen.iter().all(|s| s.view.is_none()));
    cache.observe("b", &refs(&nodes)).await;
    assert_eq!(
        fleet.calls(),
        2,
        "an unreachable agent is not asked per program"
    );
}

/// The reconciler's loop in small: observe through the cache, decide, act,
/// record the action, observe again. With answers that never expire on
/// their own, a cache that served the view from before an action would
/// make the machine send the same Load and Activate again.
#[tokio::test]
async fn after_acting_the_machine_never_resends_what_it_just_did() {
    let n = 6;
    let fleet = Fleet::with_nodes(n);
    let cache = NodeCache::new(LONG, 8, fleet.fetch());
    let nodes = names(n);
    let mut s = spec("a");
    s.strategy = canary(vec![percent(100)]);
    if let Some(c) = s.strategy.canary.as_mut() {
        c.max_unavailable = 2;
    }
    let gates = HealthGates::default();
    let requests = Requests::default();
    let mut samples = SampleBook::default();
    let failures = FailureBook::default();
    let mut status = TracerProgramStatus::default();
    let mut sent: HashSet<NodeAction> = HashSet::new();
    let mut moved: Vec<String> = Vec::new();
    // Another program's reconcile keeps the cache warm all along.
    cache.observe("other", &refs(&nodes)).await;
    for pass in 0..10i64 {
        let seen = cache.observe("p", &refs(&nodes)).await;
        let reports: Vec<NodeReport> = nodes
            .iter()
            .zip(&seen)
            .map(|((name, _), s)| match &s.view {
                Some(v) => observe::report(name, "p", v, &mut samples, &failures, 0, 1),
                None => observe::unreachable(name),
            })
            .collect();
        let out = crate::rollout::reconcile(&Input {
            program: "p",
            generation: 1,
            spec: &s,
            status: &status,
            source_commit: None,
            nodes: &reports,
            departed: &[],
            gates: &gates,
            requests: &requests,
            now: time(100 + pass),
        })
        .expect("reconcile");
        if out.actions.is_empty() {
            assert_eq!(
                moved.len(),
                n,
                "every node moved once, in batches of 2: {moved:?}"
            );
            assert!(reports.iter().all(|r| r.active().is_some()), "{reports:?}");
            return;
        }
        let mut batch: Vec<&str> = Vec::new();
        for a in &out.actions {
            assert!(
                sent.insert(a.clone()),
                "pass {pass}: {a:?} sent again: the view predates it"
            );
            fleet.apply("p", a);
            if a.kind == ActionKind::Activate && !batch.contains(&a.node.as_str()) {
                batch.push(&a.node);
            }
        }
        for a in &out.actions {
            cache.acted(&a.node, "p");
        }
        assert!(batch.len() <= 2, "maxUnavailable 2: {batch:?}");
        moved.extend(batch.iter().map(|b| b.to_string()));
        status = out.status;
    }
    panic!("no convergence in 10 passes; moved {moved:?}");
}
