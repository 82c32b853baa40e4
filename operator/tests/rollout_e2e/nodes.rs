//! The nodes of the e2e tests: real `bpfleet-agent` processes (own pin
//! root, Unix socket, Node object naming their endpoint), a syscall load
//! for their programs, and what a node holds as the tests read it: pinned
//! maps on bpffs and the agent's `List` answers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bpfleet_operator::agents::Pool;
use bpfleet_proto::v1 as pb;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use libbpf_rs::{MapCore, MapFlags, MapHandle};
use serde_json::{Value, json};

use super::cluster::PROGRAM;

pub(crate) fn agent_binary() -> PathBuf {
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
pub(crate) struct Agent {
    pub(crate) node: String,
    pub(crate) pin_root: PathBuf,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) child: Option<Child>,
    /// Arguments after the usual ones (registry CA, trusted keys...).
    pub(crate) extra: Vec<String>,
}

impl Agent {
    pub(crate) fn start(node: &str) -> Self {
        Self::start_with(node, &[])
    }

    /// An agent with `extra` arguments; its log goes to `agent.log` in its
    /// directory ([`Agent::log`]).
    pub(crate) fn start_with(node: &str, extra: &[&str]) -> Self {
        // Tests of this binary run side by side with the same node names:
        // each agent gets a pin root of its own (a shared one would share
        // the persistent maps, and one test's programs would count into
        // another's).
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let pin_root = PathBuf::from(format!(
            "/sys/fs/bpf/bpfleet-e2e-{node}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&pin_root);
        let mut a = Agent {
            node: node.to_string(),
            pin_root,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        a.spawn();
        a
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    pub(crate) fn spawn(&mut self) {
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
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("agent.log"))
                    .expect("agent log"),
            )
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // The file appears at bind(2), before listen(2): wait for a
        // connect that is accepted.
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "agent {} did not start",
                self.node
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Node object standing for this agent's node, with its endpoint.
    pub(crate) async fn register(&self, client: &kube::Client) {
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

    /// Everything the agent logged and audited, as text.
    pub(crate) fn log(&self) -> String {
        ["agent.log", "audit.jsonl"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The actions of the agent's audit log, in order.
    pub(crate) fn audited_actions(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("audit.jsonl")).expect("audit log");
        log.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("audit line is JSON");
                v["action"].as_str().expect("action").to_string()
            })
            .collect()
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn pins(&self) -> Vec<PathBuf> {
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
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    pub(crate) fn start() -> Self {
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

/// A shared map of the program on `agent`, by name.
pub(crate) fn shared_map(agent: &Agent, name: &str) -> MapHandle {
    let file = format!("_map_{name}");
    let pin = agent
        .pins()
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == file))
        .unwrap_or_else(|| panic!("no {file} pin on {}: {:?}", agent.node, agent.pins()));
    MapHandle::from_pinned_path(&pin).expect("open pinned map")
}

/// Slots 8-13 of the program's `bpfleet_config` (sampling, payload, pid
/// filter, port filter, ends, exchange events).
pub(crate) fn config_slots(agent: &Agent) -> [u64; 6] {
    let m = shared_map(agent, "bpfleet_config");
    let mut out = [0u64; 6];
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

pub(crate) fn config_stamp(agent: &Agent) -> u64 {
    let m = shared_map(agent, "bpfleet_config");
    let b = m
        .lookup(&15u32.to_ne_bytes(), MapFlags::ANY)
        .expect("lookup")
        .expect("slot 15");
    u64::from_ne_bytes(b[..8].try_into().expect("u64"))
}

/// (key, first value byte) of a hash map, sorted by key bytes.
pub(crate) fn map_entries<const K: usize>(agent: &Agent, name: &str) -> Vec<([u8; K], u8)> {
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
pub(crate) async fn listed(pool: &Pool, agents: &[Agent]) -> Vec<Option<pb::ProgramInfo>> {
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
pub(crate) async fn namespace_filters(pool: &Pool, agents: &[Agent]) -> Vec<Vec<String>> {
    listed(pool, agents)
        .await
        .into_iter()
        .map(|p| p.map(|p| p.namespaces).unwrap_or_default())
        .collect()
}

/// The HTTP tracer rules each agent holds for the program (route patterns
/// and redacted query parameters), and whether its own file overrides them.
pub(crate) async fn tracer_rules(
    pool: &Pool,
    agents: &[Agent],
) -> Vec<(Vec<String>, Vec<String>, bool)> {
    listed(pool, agents)
        .await
        .into_iter()
        .map(|p| {
            let p = p.unwrap_or_default();
            let r = p.tracer_rules.unwrap_or_default();
            (
                r.route_patterns,
                r.redact_query_params,
                p.tracer_rules_overridden,
            )
        })
        .collect()
}

/// The kernel program ids of every revision on each agent.
pub(crate) async fn prog_ids(pool: &Pool, agents: &[Agent]) -> Vec<Vec<u32>> {
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
pub(crate) async fn placement(pool: &Pool, agents: &[Agent]) -> Vec<(String, Vec<String>)> {
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
pub(crate) async fn settle(
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
pub(crate) fn counts(agent: &Agent) -> [u64; 4] {
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
pub(crate) async fn counting(agents: &[Agent], slot: usize, still: &[usize]) {
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
