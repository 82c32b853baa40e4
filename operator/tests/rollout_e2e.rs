//! Whole rollouts against real components: etcd and kube-apiserver built
//! from the Go module proxy, three real `bpfleet-agent` processes standing
//! for three nodes (own pin roots on bpffs, Unix sockets, found through the
//! `bpfleet.dev/agent-endpoint` Node annotation), real BPF programs on the
//! running kernel, and the operator in-process (so the test can stop and
//! restart it like a crashed pod). Root only.
//!
//! One test walks the life of a program, because the control plane and the
//! agents are the expensive part: immediate v1; canary v2 to 100 % with the
//! counters switching slot; canary v3 held at a pause, the operator killed
//! and restarted (it resumes at the same step), promoted by annotation;
//! a verifier-rejected revision aborted and rolled back with the reason in
//! status; an unhealthy revision (program errors) failing its analysis gate
//! on measured figures and rolled back; an agent killed mid-rollout
//! reported as unreachable; blue-green with promotion; undo to an older
//! revision; and deletion unloading every pin from every node.
//!
//! The agent binary comes from the same build (`cargo test --workspace`
//! builds it); run `cargo build -p bpfleet-agent` first when testing this
//! crate alone.

// Test code: a failed setup panics, and the panic message is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bpfleet_api::program::{Phase, RevisionState};
use bpfleet_api::{TracerPolicy, TracerProgram};
use bpfleet_e2e::ControlPlane;
use bpfleet_operator::agents::Pool;
use bpfleet_proto::v1 as pb;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const PROGRAM: &str = "syscount";
const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

fn agent_binary() -> PathBuf {
    // target/debug/deps/<this test> → target/debug/bpfleet-agent
    let exe = std::env::current_exe().expect("test exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("bpfleet-agent");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p bpfleet-agent` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// One node's agent: a process with its own pin root and socket. Dropping
/// it kills the process and removes the pin root (which detaches whatever
/// is still pinned there), also when the test fails.
struct Agent {
    node: String,
    pin_root: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Agent {
    fn start(node: &str) -> Self {
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/bpfleet-e2e-{node}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&pin_root);
        let mut a = Agent {
            node: node.to_string(),
            pin_root,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        a.spawn();
        a
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn spawn(&mut self) {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(agent_binary())
            .args(["serve", "--pin-root"])
            .arg(&self.pin_root)
            .arg("--state-file")
            .arg(self.dir.path().join("state.json"))
            .arg("--audit-log")
            .arg(self.dir.path().join("audit.jsonl"))
            .arg("--socket")
            .arg(&socket)
            .args(["--allow-unsigned", "--node-name", &self.node])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "agent {} did not start",
                self.node
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Node object standing for this agent's node, with its endpoint.
    async fn register(&self, client: &kube::Client) {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {"kubernetes.io/hostname": self.node},
                "annotations": {"bpfleet.dev/agent-endpoint": self.endpoint()}
            }
        }))
        .expect("node");
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
    }

    /// The actions of the agent's audit log, in order.
    fn audited_actions(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).expect("audit log");
        log.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("audit line is JSON");
                v["action"].as_str().expect("action").to_string()
            })
            .collect()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pins(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push(e.path());
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.pin_root, &mut v);
        v
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

/// Calls getppid(2) in a loop so the syscount programs see events.
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
                // SAFETY: getppid has no arguments and cannot fail.
                unsafe { libc::getppid() };
                std::thread::sleep(Duration::from_micros(500));
            }
        });
        Load {
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

struct Objects {
    _dir: tempfile::TempDir,
    paths: std::collections::HashMap<&'static str, (String, String)>,
}

impl Objects {
    fn write() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut paths = std::collections::HashMap::new();
        for (name, bytes) in [
            ("v1", bpfleet_bpf::SYSCOUNT_V1),
            ("v2", bpfleet_bpf::SYSCOUNT_V2),
            ("bad", bpfleet_bpf::SYSCOUNT_BAD),
            ("faulty", bpfleet_bpf::SYSCOUNT_FAULTY),
            ("legacy", bpfleet_bpf::SYSCOUNT_LEGACY),
        ] {
            let p = dir.path().join(format!("syscount_{name}.bpf.o"));
            std::fs::write(&p, bytes).expect("write object");
            let sha = hex::encode(Sha256::digest(bytes));
            paths.insert(name, (p.to_string_lossy().into_owned(), sha));
        }
        Objects { _dir: dir, paths }
    }

    fn spec(&self, which: &'static str, version: &str, strategy: Value) -> Value {
        let (path, sha) = &self.paths[which];
        json!({
            "apiVersion": "bpfleet.dev/v1alpha1",
            "kind": "TracerProgram",
            "metadata": {"name": PROGRAM},
            "spec": {
                "version": version,
                "bytecode": {"file": {"path": path}},
                "sha256": sha,
                "programs": [{
                    "name": "count_getppid",
                    "type": "Tracepoint",
                    "tracepoint": {"category": "syscalls", "name": "sys_enter_getppid"}
                }],
                "persistentMaps": ["counts"],
                "strategy": strategy,
                "progressDeadlineSeconds": 120,
            }
        })
    }
}

struct Operator {
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    fn start(client: kube::Client) -> Self {
        use clap::Parser;
        let args = bpfleet_operator::run::Args::parse_from([
            "bpfleet-operator",
            "--metrics-listen",
            "127.0.0.1:0",
            "--namespace",
            "default",
            "--resync-seconds",
            "5",
        ]);
        let task = tokio::spawn(async move {
            if let Err(e) = bpfleet_operator::run::run_with(client, args).await {
                panic!("operator stopped: {e}");
            }
        });
        Operator { task }
    }

    /// Stops it the hard way: its tasks are dropped mid-flight, as a
    /// killed pod's would be; nothing it held in memory survives.
    fn kill(self) {
        self.task.abort();
    }
}

async fn apply(api: &Api<TracerProgram>, v: &Value) {
    let name = v["metadata"]["name"].as_str().expect("name");
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(v))
        .await
        .expect("apply");
}

fn dump(tp: &TracerProgram) -> String {
    serde_json::to_string_pretty(&tp.status).unwrap_or_default()
}

async fn wait_for(
    api: &Api<TracerProgram>,
    what: &str,
    secs: u64,
    cond: impl Fn(&TracerProgram) -> bool,
) -> TracerProgram {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let tp = api.get(PROGRAM).await.expect("get");
        if cond(&tp) {
            return tp;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; status:\n{}",
            dump(&tp)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn phase(tp: &TracerProgram) -> Option<Phase> {
    tp.status.as_ref().and_then(|s| s.phase)
}

fn stable(tp: &TracerProgram) -> String {
    tp.status
        .as_ref()
        .and_then(|s| s.stable_revision.clone())
        .unwrap_or_default()
}

fn healthy_on(tp: &TracerProgram, rev: &str) -> bool {
    let Some(s) = tp.status.as_ref() else {
        return false;
    };
    phase(tp) == Some(Phase::Healthy)
        && s.stable_revision.as_deref() == Some(rev)
        && s.nodes.updated == 3
        && s.nodes.ready == 3
        && s.observed_generation == tp.metadata.generation
}

fn spec_revision(v: &Value) -> String {
    let spec = serde_json::from_value(v["spec"].clone()).expect("spec");
    bpfleet_operator::revision::revision_id(&spec).expect("revision id")
}

/// Creates the e2e TracerPolicy (`syscount-health`) with `spec`.
async fn create_policy(client: &kube::Client, spec: Value) -> Api<TracerPolicy> {
    let policies: Api<TracerPolicy> = Api::all(client.clone());
    let policy: TracerPolicy = serde_json::from_value(json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "TracerPolicy",
        "metadata": {"name": "syscount-health"},
        "spec": spec
    }))
    .expect("policy");
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy");
    policies
}

/// Replaces the e2e policy's `spec.config`.
async fn set_policy_config(policies: &Api<TracerPolicy>, config: Value) {
    policies
        .patch(
            "syscount-health",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"config": null}})),
        )
        .await
        .expect("clear policy config");
    policies
        .patch(
            "syscount-health",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"config": config}})),
        )
        .await
        .expect("set policy config");
}

/// The e2e policy's Ready condition once it describes the policy's current
/// generation and satisfies `ok`.
async fn policy_settled(
    policies: &Api<TracerPolicy>,
    what: &str,
    ok: impl Fn(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition) -> bool,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let p = policies.get("syscount-health").await.expect("get policy");
        let ready = p.status.as_ref().and_then(|s| {
            (s.observed_generation == p.metadata.generation)
                .then(|| s.conditions.iter().find(|c| c.type_ == "Ready"))
                .flatten()
        });
        if let Some(c) = ready
            && ok(c)
        {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: policy status {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A shared map of the program on `agent`, by name.
fn shared_map(agent: &Agent, name: &str) -> MapHandle {
    let file = format!("_map_{name}");
    let pin = agent
        .pins()
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == file))
        .unwrap_or_else(|| panic!("no {file} pin on {}: {:?}", agent.node, agent.pins()));
    MapHandle::from_pinned_path(&pin).expect("open pinned map")
}

/// Slots 8-11 of the program's `bpfleet_config` (sampling, payload, pid
/// filter, port filter).
fn config_slots(agent: &Agent) -> [u64; 4] {
    let m = shared_map(agent, "bpfleet_config");
    let mut out = [0u64; 4];
    for (i, v) in out.iter_mut().enumerate() {
        let key = (8 + i as u32).to_ne_bytes();
        let b = m
            .lookup(&key, MapFlags::ANY)
            .expect("lookup")
            .expect("slot");
        *v = u64::from_ne_bytes(b[..8].try_into().expect("u64"));
    }
    out
}

fn config_stamp(agent: &Agent) -> u64 {
    let m = shared_map(agent, "bpfleet_config");
    let b = m
        .lookup(&15u32.to_ne_bytes(), MapFlags::ANY)
        .expect("lookup")
        .expect("slot 15");
    u64::from_ne_bytes(b[..8].try_into().expect("u64"))
}

/// (key, first value byte) of a hash map, sorted by key bytes.
fn map_entries<const K: usize>(agent: &Agent, name: &str) -> Vec<([u8; K], u8)> {
    let m = shared_map(agent, name);
    let mut out: Vec<([u8; K], u8)> = m
        .keys()
        .map(|k| {
            let v = m.lookup(&k, MapFlags::ANY).expect("lookup").expect("value");
            (k.try_into().expect("key size"), v[0])
        })
        .collect();
    out.sort();
    out
}

/// What each agent lists of the program (None: nothing).
async fn listed(pool: &Pool, agents: &[Agent]) -> Vec<Option<pb::ProgramInfo>> {
    let mut out = Vec::new();
    for a in agents {
        let mut c = pool.client(&a.endpoint()).expect("client");
        let list = c
            .list(pb::ListRequest {
                program: PROGRAM.into(),
            })
            .await
            .expect("list")
            .into_inner();
        out.push(list.programs.into_iter().next());
    }
    out
}

/// The namespace filter each agent holds for the program.
async fn namespace_filters(pool: &Pool, agents: &[Agent]) -> Vec<Vec<String>> {
    listed(pool, agents)
        .await
        .into_iter()
        .map(|p| p.map(|p| p.namespaces).unwrap_or_default())
        .collect()
}

/// The kernel program ids of every revision on each agent.
async fn prog_ids(pool: &Pool, agents: &[Agent]) -> Vec<Vec<u32>> {
    listed(pool, agents)
        .await
        .into_iter()
        .map(|p| {
            let mut ids: Vec<u32> = p
                .iter()
                .flat_map(|p| p.revisions.iter().flat_map(|r| r.prog_ids.iter().copied()))
                .collect();
            ids.sort_unstable();
            ids
        })
        .collect()
}

/// (active revision, loaded revisions) of the program on each agent.
async fn placement(pool: &Pool, agents: &[Agent]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for a in agents {
        let mut c = pool.client(&a.endpoint()).expect("client");
        let list = match c
            .list(pb::ListRequest {
                program: PROGRAM.into(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => pb::ListResponse::default(),
            Err(s) => panic!("list on {}: {s}", a.node),
        };
        let p = list.programs.into_iter().find(|p| p.program == PROGRAM);
        let active = p
            .as_ref()
            .map(|p| p.active_revision.clone())
            .unwrap_or_default();
        let mut loaded: Vec<String> = p
            .map(|p| p.revisions.into_iter().map(|r| r.revision).collect())
            .unwrap_or_default();
        loaded.sort();
        out.push((active, loaded));
    }
    out
}

/// Waits until the agents' placement satisfies `ok` (status is written
/// before the actions it decides are carried out, so nodes trail it by a
/// moment).
async fn settle(
    pool: &Pool,
    agents: &[Agent],
    what: &str,
    ok: impl Fn(&[(String, Vec<String>)]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let placed = placement(pool, agents).await;
        if ok(&placed) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: nodes hold {placed:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The node's pinned `counts` map (shared by every revision).
fn counts(agent: &Agent) -> [u64; 4] {
    let pin = agent
        .pins()
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "_map_counts"))
        .unwrap_or_else(|| panic!("no counts pin on {}: {:?}", agent.node, agent.pins()));
    let m = MapHandle::from_pinned_path(&pin).expect("open counts");
    let mut out = [0u64; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let key = (i as u32).to_ne_bytes();
        if let Some(v) = m.lookup(&key, MapFlags::ANY).expect("lookup") {
            *slot = u64::from_ne_bytes(v[..8].try_into().expect("u64"));
        }
    }
    out
}

/// Slot `slot` of `counts` moves on every node within a few seconds, and
/// `still` slots do not.
async fn counting(agents: &[Agent], slot: usize, still: &[usize]) {
    let before: Vec<[u64; 4]> = agents.iter().map(counts).collect();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after: Vec<[u64; 4]> = agents.iter().map(counts).collect();
    for ((a, b), ag) in after.iter().zip(&before).zip(agents) {
        assert!(
            a[slot] > b[slot],
            "{}: slot {slot} did not move: {b:?} → {a:?}",
            ag.node
        );
        for &s in still {
            assert_eq!(a[s], b[s], "{}: slot {s} moved: {b:?} → {a:?}", ag.node);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_program_lives_through_every_kind_of_rollout() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "bpfleet_operator=info".into()),
        ))
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    let client = cp.client().await.expect("client");
    let objects = Objects::write();
    let mut agents: Vec<Agent> = NODES.iter().map(|n| Agent::start(n)).collect();
    let _load = Load::start();
    let pool = Pool::new(None, Duration::from_secs(30));

    for a in &agents {
        a.register(&client).await;
    }
    let policies = create_policy(
        &client,
        json!({
            "targets": {"programNames": [PROGRAM]},
            "health": {"maxProgramFailures": 0, "minSamples": 1, "consecutiveFailureLimit": 1}
        }),
    )
    .await;

    let api: Api<TracerProgram> = Api::all(client.clone());
    let mut operator = Operator::start(client.clone());

    // 1. v1, immediate: every node runs it and counts into slot 0.
    let v1 = objects.spec("v1", "1.0.0", json!({"immediate": {}}));
    let r1 = spec_revision(&v1);
    apply(&api, &v1).await;
    let tp = wait_for(&api, "v1 healthy", 60, |tp| healthy_on(tp, &r1)).await;
    assert!(tp.finalizers().iter().any(|f| f == "bpfleet.dev/unload"));
    settle(&pool, &agents, "v1 everywhere", |p| {
        p.iter().all(|(a, _)| *a == r1)
    })
    .await;
    counting(&agents, 0, &[1, 2]).await;
    // The policy (empty config, still a policy) was written between each
    // node's first Load and its Activate: no revision ran unconfigured.
    for a in &agents {
        let actions = a.audited_actions();
        let first = |what: &str| actions.iter().position(|x| x == what);
        let (load, config, activate) = (first("load"), first("update_config"), first("activate"));
        assert!(
            load < config && config < activate && load.is_some(),
            "{}: audit order {actions:?}",
            a.node
        );
    }

    // 1b. The policy's runtime configuration reaches every node's kernel
    //     maps, with no reload, and both statuses say where it is in force;
    //     a policy change is written again.
    let ids_before = prog_ids(&pool, &agents).await;
    let config = json!({"samplingRate": 0.5, "payloadBytes": 512,
        "filters": {"pids": [4242, 77], "ports": [8080], "excludePorts": [22], "namespaces": ["shop"]}});
    set_policy_config(&policies, config).await;
    let pol = policy_settled(&policies, "policy in force", |c| c.reason == "Applied").await;
    assert!(pol.message.contains("3/3 nodes"), "{}", pol.message);
    for a in &agents {
        assert_eq!(config_slots(a), [500_000, 512, 1, 3], "{}", a.node);
        assert_eq!(
            map_entries::<4>(a, "bpfleet_pids"),
            [(77u32.to_ne_bytes(), 1), (4242u32.to_ne_bytes(), 1)]
        );
        let mut ports = map_entries::<2>(a, "bpfleet_ports");
        ports.sort_by_key(|(k, _)| u16::from_ne_bytes(*k));
        assert_eq!(
            ports,
            [(22u16.to_ne_bytes(), 2), (8080u16.to_ne_bytes(), 1)],
            "{}",
            a.node
        );
        assert_ne!(config_stamp(a), 0, "{}", a.node);
    }
    let tp = wait_for(&api, "program reports the policy", 30, |tp| {
        tp.status
            .as_ref()
            .and_then(|s| s.policy.as_ref())
            .is_some_and(|p| p.configured_nodes == 3)
    })
    .await;
    let applied = tp
        .status
        .as_ref()
        .and_then(|s| s.policy.clone())
        .expect("policy in status");
    assert_eq!(
        (applied.name.as_str(), applied.nodes, applied.message),
        ("syscount-health", 3, None)
    );
    assert_eq!(
        prog_ids(&pool, &agents).await,
        ids_before,
        "configuration must not reload programs"
    );
    assert_eq!(
        namespace_filters(&pool, &agents).await,
        vec![vec!["shop".to_string()]; 3]
    );
    let stamp = config_stamp(&agents[0]);
    set_policy_config(&policies, json!({"filters": {"ports": [9090]}})).await;
    policy_settled(&policies, "changed policy in force", |c| {
        c.reason == "Applied"
    })
    .await;
    for a in &agents {
        assert_eq!(config_slots(a), [0, 0, 0, 1], "{}", a.node);
        assert_eq!(
            map_entries::<2>(a, "bpfleet_ports"),
            [(9090u16.to_ne_bytes(), 1)],
            "{}: replaced, not added",
            a.node
        );
        assert_ne!(config_stamp(a), stamp, "{}", a.node);
    }
    assert_eq!(
        namespace_filters(&pool, &agents).await,
        vec![Vec::<String>::new(); 3],
        "the new policy has no namespace filter: lifted"
    );
    counting(&agents, 0, &[1, 2]).await;

    // 2. v2 by canary: one node of three first, held by a timed pause, then
    //    all. The counters move from slot 0 to slot 1.
    let v2 = objects.spec(
        "v2",
        "2.0.0",
        json!({"canary": {"steps": [{"setNodePercent": 33}, {"pause": {"duration": "4s"}}, {"setNodePercent": 100}]}}),
    );
    let r2 = spec_revision(&v2);
    apply(&api, &v2).await;
    let tp = wait_for(&api, "v2 on one node, pausing", 60, |tp| {
        tp.status.as_ref().is_some_and(|s| {
            s.nodes.updated == 1 && s.candidate_revision.as_deref() == Some(r2.as_str())
        })
    })
    .await;
    let on_r2 = placement(&pool, &agents)
        .await
        .iter()
        .filter(|(a, _)| *a == r2)
        .count();
    assert_eq!(on_r2, 1, "exactly one node on the candidate: {}", dump(&tp));
    wait_for(&api, "v2 healthy", 60, |tp| healthy_on(tp, &r2)).await;
    counting(&agents, 1, &[0, 2]).await;

    // 3. v3 (v1's object again under another version label is the same
    //    revision, so use the faulty-free v1 bytes with another map set:
    //    here, simply v1 by canary with an untimed pause). Kill the
    //    operator at the pause; the new one resumes at the same step;
    //    promote by annotation.
    let v3 = objects.spec(
        "v1",
        "3.0.0",
        json!({"canary": {"steps": [{"setNodePercent": 33}, {"pause": {}}, {"setNodePercent": 66}, {"pause": {}}]}}),
    );
    apply(&api, &v3).await;
    let paused = wait_for(&api, "v3 paused at step 1", 60, |tp| {
        phase(tp) == Some(Phase::Paused)
            && tp
                .status
                .as_ref()
                .is_some_and(|s| s.nodes.updated == 1 && s.current_step_index == Some(1))
    })
    .await;
    operator.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    operator = Operator::start(client.clone());
    // Give the new operator several reconciles: it must stay where it was.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let resumed = api.get(PROGRAM).await.expect("get");
    let (a, b) = (
        paused.status.clone().unwrap(),
        resumed.status.clone().unwrap(),
    );
    assert_eq!(
        (
            a.phase,
            a.current_step_index,
            a.nodes.updated,
            a.candidate_revision.clone()
        ),
        (
            b.phase,
            b.current_step_index,
            b.nodes.updated,
            b.candidate_revision.clone()
        ),
        "restarted operator moved the rollout:\n{}",
        dump(&resumed)
    );
    let promote = json!({"metadata": {"annotations": {"bpfleet.dev/promote": "e2e-1"}}});
    api.patch(PROGRAM, &PatchParams::default(), &Patch::Merge(&promote))
        .await
        .expect("promote");
    let tp = wait_for(&api, "promote acknowledged, 2 nodes", 60, |tp| {
        tp.status.as_ref().is_some_and(|s| {
            s.nodes.updated == 2
                && s.rollout
                    .as_ref()
                    .is_some_and(|r| r.acknowledged_requests.iter().any(|x| x == "promote/e2e-1"))
        })
    })
    .await;
    assert_eq!(phase(&tp), Some(Phase::Paused), "{}", dump(&tp));
    let promote = json!({"metadata": {"annotations": {"bpfleet.dev/promote": "e2e-2"}}});
    api.patch(PROGRAM, &PatchParams::default(), &Patch::Merge(&promote))
        .await
        .expect("promote");
    // v3 has v1's content: same revision id, so the registry shows r1
    // coming back rather than a new entry.
    wait_for(&api, "v3 (= r1) healthy", 60, |tp| healthy_on(tp, &r1)).await;
    counting(&agents, 0, &[1, 2]).await;

    // 4. A revision the verifier rejects: the canary node fails to load it;
    //    the rollout aborts, every node stays on / returns to stable, the
    //    reason is in status, and nothing of the bad revision is left.
    let bad = objects.spec(
        "bad",
        "4.0.0-bad",
        json!({"canary": {"steps": [{"setNodePercent": 33}, {"pause": {}}]}}),
    );
    let rbad = spec_revision(&bad);
    apply(&api, &bad).await;
    let tp = wait_for(&api, "bad revision aborted", 60, |tp| {
        phase(tp) == Some(Phase::Aborted)
    })
    .await;
    let st = tp.status.clone().unwrap();
    assert_eq!(st.stable_revision.as_deref(), Some(r1.as_str()));
    let text = dump(&tp);
    assert!(
        text.contains("VerifierRejected"),
        "reason in status:\n{text}"
    );
    let rec = st
        .history
        .iter()
        .find(|h| h.revision == rbad)
        .expect("bad revision in registry");
    assert_ne!(rec.state, RevisionState::Active);
    settle(&pool, &agents, "bad revision gone", |p| {
        p.iter().all(|(a, l)| *a == r1 && !l.contains(&rbad))
    })
    .await;
    counting(&agents, 0, &[1, 2]).await;
    // Re-applying the same bad spec does nothing: it stays aborted.
    apply(&api, &bad).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        phase(&api.get(PROGRAM).await.unwrap()),
        Some(Phase::Aborted)
    );

    // 5. An unhealthy revision: it loads, but reports program errors on
    //    every event; the analysis gate fails on the measured figures and
    //    the canary node is rolled back.
    let faulty = objects.spec(
        "faulty",
        "5.0.0",
        json!({"canary": {"steps": [
            {"setNodePercent": 33},
            {"analysis": {"durationSeconds": 12, "intervalSeconds": 3}},
            {"setNodePercent": 100}
        ]}}),
    );
    let rfaulty = spec_revision(&faulty);
    apply(&api, &faulty).await;
    let tp = wait_for(&api, "unhealthy revision rolled back", 90, |tp| {
        phase(tp) == Some(Phase::Aborted)
            && tp
                .status
                .as_ref()
                .is_some_and(|s| s.candidate_revision.as_deref() != Some(rbad.as_str()))
            && tp
                .status
                .as_ref()
                .and_then(|s| s.last_analysis.as_ref())
                .is_some_and(|a| a.revision == rfaulty)
    })
    .await;
    let analysis = tp
        .status
        .as_ref()
        .and_then(|s| s.last_analysis.clone())
        .unwrap();
    let gate = analysis
        .gates
        .iter()
        .find(|g| g.gate == "programFailures")
        .unwrap_or_else(|| panic!("no programFailures gate: {}", dump(&tp)));
    assert!(!gate.passed, "{}", dump(&tp));
    assert!(
        gate.measured.ends_with("failures") && !gate.measured.starts_with("0 "),
        "{}",
        dump(&tp)
    );
    settle(
        &pool,
        &agents,
        "unhealthy revision rolled back and unloaded",
        |p| p.iter().all(|(a, l)| *a == r1 && !l.contains(&rfaulty)),
    )
    .await;
    counting(&agents, 0, &[1, 2]).await;

    // 6. An agent dies mid-rollout: the node is reported, the rollout waits;
    //    back up, it finishes. v2 by canary one node at a time.
    let v2b = objects.spec(
        "v2",
        "2.0.1",
        json!({"canary": {"steps": [{"setNodePercent": 100}], "maxUnavailable": 1}}),
    );
    agents[2].kill9();
    apply(&api, &v2b).await;
    let tp = wait_for(&api, "dead agent reported", 60, |tp| {
        tp.status.as_ref().is_some_and(|s| {
            s.failing_nodes
                .iter()
                .any(|f| f.node == "node-c" && f.reason == "AgentUnreachable")
        })
    })
    .await;
    assert_ne!(phase(&tp), Some(Phase::Healthy));
    agents[2].spawn();
    wait_for(&api, "v2 healthy after the agent came back", 90, |tp| {
        healthy_on(tp, &r2)
    })
    .await;

    // 7. Blue-green back to v1's bytes with a version bump: candidate loaded
    //    inactive everywhere, promoted automatically, previous kept.
    let bg = objects.spec(
        "v1",
        "6.0.0",
        json!({"blueGreen": {"autoPromotionEnabled": true, "autoPromotionSeconds": 2, "keepPreviousSeconds": 3}}),
    );
    apply(&api, &bg).await;
    wait_for(&api, "blue-green promoted", 60, |tp| healthy_on(tp, &r1)).await;
    counting(&agents, 0, &[1, 2]).await;
    // After keepPreviousSeconds the previous revision is unloaded.
    settle(&pool, &agents, "previous revision unloaded", |p| {
        p.iter().all(|(a, l)| *a == r1 && *l == vec![r1.clone()])
    })
    .await;

    // 8. Undo to r2 from the registry, without touching the spec.
    let undo = json!({"metadata": {"annotations": {"bpfleet.dev/undo": format!("{r2}@e2e")}}});
    api.patch(PROGRAM, &PatchParams::default(), &Patch::Merge(&undo))
        .await
        .expect("undo");
    wait_for(&api, "undo to r2", 60, |tp| {
        stable(tp) == r2 && tp.status.as_ref().is_some_and(|s| s.nodes.ready == 3)
    })
    .await;
    settle(&pool, &agents, "undo on every node", |p| {
        p.iter().all(|(a, _)| *a == r2)
    })
    .await;
    counting(&agents, 1, &[0, 2]).await;

    // 9. Delete: the finalizer unloads every revision from every node and
    //    removes every pin before the object goes.
    api.delete(PROGRAM, &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.get_opt(PROGRAM).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "object not finalized");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for a in &agents {
        assert!(
            a.pins().is_empty(),
            "{} still has pins: {:?}",
            a.node,
            a.pins()
        );
    }
    for (active, loaded) in placement(&pool, &agents).await {
        assert!(active.is_empty() && loaded.is_empty());
    }
    operator.kill();
    drop(agents);
    drop(cp);
}

/// A policy a program cannot honour (a port filter for an object without
/// `bpfleet_ports`): refused by the agent, said in both statuses with the
/// agent's words, not asked again every reconcile; a policy it can honour
/// then goes in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_the_program_cannot_honour_is_reported_not_retried() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    let client = cp.client().await.expect("client");
    let objects = Objects::write();
    let agent = Agent::start("node-legacy");
    agent.register(&client).await;
    let policies = create_policy(
        &client,
        json!({"targets": {"programNames": [PROGRAM]}, "config": {"filters": {"ports": [8080]}}}),
    )
    .await;
    let api: Api<TracerProgram> = Api::all(client.clone());
    let operator = Operator::start(client.clone());

    let legacy = objects.spec("legacy", "1.0.0", json!({"immediate": {}}));
    let rev = spec_revision(&legacy);
    apply(&api, &legacy).await;
    let tp = wait_for(&api, "healthy, the policy refused", 60, |tp| {
        phase(tp) == Some(Phase::Healthy)
            && stable(tp) == rev
            && tp
                .status
                .as_ref()
                .and_then(|s| s.policy.as_ref())
                .is_some_and(|p| p.message.is_some())
    })
    .await;
    let applied = tp.status.and_then(|s| s.policy).expect("status.policy");
    assert_eq!((applied.nodes, applied.configured_nodes), (1, 0));
    let message = applied.message.unwrap_or_default();
    assert!(
        message.contains("node-legacy") && message.contains("bpfleet_ports"),
        "{message}"
    );
    let ready = policy_settled(&policies, "policy refused", |c| c.reason == "ConfigRefused").await;
    assert!(ready.message.contains("bpfleet_ports"), "{}", ready.message);

    // Not asked again while nothing changes: the operator resyncs every 5 s.
    let writes = || {
        agent
            .audited_actions()
            .iter()
            .filter(|a| *a == "update_config")
            .count()
    };
    let before = writes();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(writes(), before, "a refused write was retried unchanged");

    // A policy it can honour: in force, the refusal gone from both statuses.
    set_policy_config(&policies, json!({"samplingRate": 0.5})).await;
    let ready = policy_settled(&policies, "policy in force", |c| c.reason == "Applied").await;
    assert!(ready.message.contains("1/1 nodes"), "{}", ready.message);
    assert_eq!(config_slots(&agent), [500_000, 0, 0, 0]);
    let tp = api.get(PROGRAM).await.expect("get");
    let applied = tp.status.and_then(|s| s.policy).expect("status.policy");
    assert_eq!((applied.configured_nodes, applied.message), (1, None));

    api.delete(PROGRAM, &DeleteParams::default())
        .await
        .expect("delete");
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get_opt(PROGRAM).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "program not deleted");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(agent.pins().is_empty(), "pins left: {:?}", agent.pins());
    operator.kill();
}

/// Agents that answer garbage, never answer, or are not there; a program
/// whose selector matches no node: clear status, no panic, and no hot loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_agents_and_empty_selections_are_reported_without_a_hot_loop() {
    use std::io::Write as _;
    use std::os::unix::net::UnixListener;

    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    let client = cp.client().await.expect("client");
    let dir = tempfile::tempdir().expect("tempdir");

    // Garbage: accepts and writes bytes that are not HTTP/2.
    let garbage = dir.path().join("garbage.sock");
    let l = UnixListener::bind(&garbage).expect("bind");
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let _ = s.write_all(b"this is not a gRPC server\r\n\r\n\x00\x01\x02");
        }
    });
    // Silent: accepts and never answers.
    let silent = dir.path().join("silent.sock");
    let l = UnixListener::bind(&silent).expect("bind");
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            h.lock().unwrap().push(s);
        }
    });
    let missing = dir.path().join("missing.sock");

    let nodes: Api<Node> = Api::all(client.clone());
    for (name, sock) in [
        ("garbage", &garbage),
        ("silent", &silent),
        ("missing", &missing),
    ] {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"pool": "hostile"},
                "annotations": {"bpfleet.dev/agent-endpoint": format!("unix://{}", sock.display())}
            }
        }))
        .expect("node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("node");
    }
    let objects = Objects::write();
    let api: Api<TracerProgram> = Api::all(client.clone());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let task = {
        use clap::Parser;
        let args = bpfleet_operator::run::Args::parse_from([
            "bpfleet-operator",
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--namespace",
            "default",
            "--observe-timeout-seconds",
            "2",
        ]);
        let c = client.clone();
        tokio::spawn(async move { bpfleet_operator::run::run_with(c, args).await })
    };

    let v1 = objects.spec("v1", "1.0.0", json!({"immediate": {}}));
    apply(&api, &v1).await;
    let tp = wait_for(&api, "every hostile node reported", 60, |tp| {
        tp.status.as_ref().is_some_and(|s| {
            s.failing_nodes.len() == 3
                && s.failing_nodes
                    .iter()
                    .all(|f| f.reason == "AgentUnreachable")
        })
    })
    .await;
    let st = tp.status.clone().unwrap();
    assert_ne!(st.phase, Some(Phase::Healthy), "{}", dump(&tp));
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False"),
        "{}",
        dump(&tp)
    );

    // No hot loop: over 10 s the operator reconciles a handful of times.
    let reconciles = || async {
        let body = reqwest_like(port).await;
        body.lines()
            .filter(|l| l.starts_with("bpfleet_operator_reconciles_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = reconciles().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = reconciles().await - before;
    assert!(
        during <= 30.0,
        "{during} reconciles in 10 s against unreachable agents"
    );

    // A selector that matches no node: said in status, nothing attempted.
    let mut none = objects.spec("v2", "1.0.0", json!({"immediate": {}}));
    none["metadata"]["name"] = json!("nowhere");
    none["spec"]["nodeSelector"] = json!({"matchLabels": {"pool": "does-not-exist"}});
    apply(&api, &none).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tp = api.get("nowhere").await.expect("get");
        let text = dump(&tp);
        if tp
            .status
            .as_ref()
            .is_some_and(|s| s.nodes.desired == 0 && s.message.is_some())
        {
            assert!(text.contains("no node"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no status for an empty selection: {text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Deletion is held by the unreachable nodes (the operator cannot prove
    // them clean) until those Node objects go.
    api.delete(PROGRAM, &DeleteParams::default())
        .await
        .expect("delete");
    api.delete("nowhere", &DeleteParams::default())
        .await
        .expect("delete");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Both wait: at deletion every node with an agent endpoint counts, since
    // a program may linger on nodes its selector no longer matches.
    assert!(api.get_opt(PROGRAM).await.expect("get").is_some());
    assert!(api.get_opt("nowhere").await.expect("get").is_some());
    for n in ["garbage", "silent", "missing"] {
        nodes
            .delete(n, &DeleteParams::default())
            .await
            .expect("delete node");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get_opt(PROGRAM).await.expect("get").is_some()
        || api.get_opt("nowhere").await.expect("get").is_some()
    {
        assert!(
            Instant::now() < deadline,
            "deletion not released after the nodes went"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(!task.is_finished(), "operator stopped: {:?}", task);
    task.abort();
    drop(held);
}

/// GET /metrics from the in-process operator.
async fn reqwest_like(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}
