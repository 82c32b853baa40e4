//! Fleet benchmark: the real operator (its release binary, as a separate
//! process) against the real kube-apiserver, driving a simulated fleet of
//! node agents — real tonic gRPC servers on Unix sockets, one per node,
//! whose kernel side is replaced by bookkeeping in memory (the way kwok
//! stands in for kubelets). The real agent is measured by the node-agent
//! benchmarks and exercised by the end-to-end tests; this one measures the
//! operator at fleet size.
//!
//! Run (no root needed):
//!     cargo bench -p bpfleet-operator --bench fleet
//! Knobs (environment): FLEET_NODES (1000), FLEET_PROGRAMS (20),
//! FLEET_PAUSE_SECONDS (10; each canary has two pauses);
//! FLEET_OPERATOR_WRAPPER runs the operator under a profiler (e.g.
//! `env LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so
//! DUMP_HEAPTRACK_OUTPUT=/tmp/op.raw`), FLEET_OPERATOR_LOG keeps its log.
//!
//! It creates the nodes, rolls v1 of every program out at once
//! (immediate), then v2 of every program at once by canary
//! `[10 %, pause, 50 %, pause, 100 %]` (verifying everywhere first, the
//! default), and reports: time to complete against the sum of the
//! configured pauses, how long verification took, the largest status,
//! reconciles per second, apiserver requests per rollout step, and the
//! operator's RSS.

// A benchmark reports by panicking when its setup fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bpfleet_api::TracerProgram;
use bpfleet_api::program::Phase;
use bpfleet_e2e::ControlPlane;
use bpfleet_proto::v1 as pb;
use bpfleet_proto::v1::agent_server::{Agent, AgentServer};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tonic::{Request, Response, Status};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Program {
    loaded: BTreeMap<String, u64>,
    active: Option<String>,
    previous: Option<String>,
}

/// One simulated node agent: the Agent API over gRPC, state in memory.
struct SimAgent {
    started: Instant,
    programs: Mutex<HashMap<String, Program>>,
}

impl SimAgent {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Program>) -> T) -> T {
        f(&mut self.programs.lock().unwrap())
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Agent for SimAgent {
    async fn load(&self, r: Request<pb::LoadRequest>) -> Reply<pb::LoadResponse> {
        let r = r.into_inner();
        if r.entries.is_empty() {
            return Err(Status::invalid_argument("no entries"));
        }
        let now = self.started.elapsed().as_millis() as u64;
        let created = self.with(|p| {
            p.entry(r.program.clone())
                .or_default()
                .loaded
                .insert(r.revision.clone(), now)
                .is_none()
        });
        Ok(Response::new(pb::LoadResponse {
            revision: None,
            created,
        }))
    }

    async fn activate(&self, r: Request<pb::ActivateRequest>) -> Reply<pb::ActivateResponse> {
        let r = r.into_inner();
        self.with(|p| {
            let prog = p
                .get_mut(&r.program)
                .ok_or_else(|| Status::not_found("program"))?;
            if !prog.loaded.contains_key(&r.revision) {
                return Err(Status::not_found("revision"));
            }
            if prog.active.as_deref() != Some(r.revision.as_str()) {
                prog.previous = prog.active.replace(r.revision.clone());
            }
            Ok(Response::new(pb::ActivateResponse {
                active_revision: r.revision,
                previous_revision: prog.previous.clone().unwrap_or_default(),
                switch_nanos: 1_000,
            }))
        })
    }

    async fn rollback(&self, r: Request<pb::RollbackRequest>) -> Reply<pb::RollbackResponse> {
        let r = r.into_inner();
        self.with(|p| {
            let prog = p
                .get_mut(&r.program)
                .ok_or_else(|| Status::not_found("program"))?;
            let to = if r.to_revision.is_empty() {
                prog.previous
                    .clone()
                    .ok_or_else(|| Status::failed_precondition("no previous revision"))?
            } else {
                r.to_revision
            };
            if !prog.loaded.contains_key(&to) {
                return Err(Status::not_found("revision"));
            }
            prog.previous = prog.active.replace(to.clone());
            Ok(Response::new(pb::RollbackResponse {
                active_revision: to,
                previous_revision: prog.previous.clone().unwrap_or_default(),
                switch_nanos: 1_000,
            }))
        })
    }

    async fn unload(&self, r: Request<pb::UnloadRequest>) -> Reply<pb::UnloadResponse> {
        let r = r.into_inner();
        self.with(|p| {
            if r.revision.is_empty() {
                p.remove(&r.program);
            } else if let Some(prog) = p.get_mut(&r.program) {
                prog.loaded.remove(&r.revision);
                if prog.active.as_deref() == Some(r.revision.as_str()) {
                    prog.active = None;
                }
                if prog.loaded.is_empty() {
                    p.remove(&r.program);
                }
            }
        });
        Ok(Response::new(pb::UnloadResponse::default()))
    }

    async fn list(&self, r: Request<pb::ListRequest>) -> Reply<pb::ListResponse> {
        let want = r.into_inner().program;
        let programs = self.with(|p| {
            p.iter()
                .filter(|(name, _)| want.is_empty() || **name == want)
                .map(|(name, prog)| pb::ProgramInfo {
                    program: name.clone(),
                    active_revision: prog.active.clone().unwrap_or_default(),
                    revisions: prog
                        .loaded
                        .keys()
                        .map(|rev| pb::RevisionInfo {
                            program: name.clone(),
                            revision: rev.clone(),
                            state: if prog.active.as_deref() == Some(rev.as_str()) {
                                pb::RevisionState::Active as i32
                            } else {
                                pb::RevisionState::Inactive as i32
                            },
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect()
        });
        Ok(Response::new(pb::ListResponse { programs }))
    }

    async fn stats(&self, r: Request<pb::StatsRequest>) -> Reply<pb::StatsResponse> {
        let want = r.into_inner().program;
        let now = self.started.elapsed().as_millis() as u64;
        let revisions = self.with(|p| {
            p.iter()
                .filter(|(name, _)| want.is_empty() || **name == want)
                .flat_map(|(name, prog)| {
                    prog.loaded.iter().map(move |(rev, at)| pb::RevisionStats {
                        program: name.clone(),
                        revision: rev.clone(),
                        active: prog.active.as_deref() == Some(rev.as_str()),
                        run_cnt: now - at,
                        run_time_ns: (now - at) * 100,
                        map_memory_bytes: 4096,
                        ..Default::default()
                    })
                })
                .collect()
        });
        Ok(Response::new(pb::StatsResponse {
            revisions,
            stats_enabled: true,
            ..Default::default()
        }))
    }

    async fn update_config(
        &self,
        _: Request<pb::UpdateConfigRequest>,
    ) -> Reply<pb::UpdateConfigResponse> {
        Ok(Response::new(pb::UpdateConfigResponse::default()))
    }

    async fn health(&self, _: Request<pb::HealthRequest>) -> Reply<pb::HealthResponse> {
        Ok(Response::new(pb::HealthResponse {
            ok: true,
            ..Default::default()
        }))
    }

    async fn node_info(&self, _: Request<pb::NodeInfoRequest>) -> Reply<pb::NodeInfoResponse> {
        Ok(Response::new(pb::NodeInfoResponse::default()))
    }
}

fn start_agent(socket: PathBuf) {
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind sim agent");
    let svc = SimAgent {
        started: Instant::now(),
        programs: Mutex::default(),
    };
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(AgentServer::new(svc))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await;
    });
}

fn spec(name: &str, version: &str, strategy: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "bpfleet.dev/v1alpha1",
        "kind": "TracerProgram",
        "metadata": {"name": name},
        "spec": {
            "version": version,
            "bytecode": {"file": {"path": format!("/var/lib/bpfleet/{name}-{version}.bpf.o")}},
            "sha256": format!("{:0>64}", version.replace('.', "")),
            "programs": [{"name": "count", "type": "Tracepoint",
                          "tracepoint": {"category": "syscalls", "name": "sys_enter_write"}}],
            "strategy": strategy,
            "progressDeadlineSeconds": 600,
        }
    })
}

async fn scrape_sum(url: &str, metric: &str) -> f64 {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", url])
        .output()
        .await
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(metric))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The operator's agent calls so far, by `call` label.
async fn agent_calls(url: &str) -> BTreeMap<String, f64> {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", url])
        .output()
        .await
        .expect("curl");
    let mut by = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(rest) = l.strip_prefix("bpfleet_operator_agent_calls_total{") else {
            continue;
        };
        let Some(call) = rest
            .split(',')
            .find_map(|kv| kv.strip_prefix("call=\""))
            .and_then(|v| v.split('"').next())
        else {
            continue;
        };
        let n: f64 = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *by.entry(call.to_string()).or_insert(0.0) += n;
    }
    by
}

async fn apiserver_requests(client: &kube::Client) -> f64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.expect("apiserver metrics");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What a wait saw besides completion.
#[derive(Default)]
struct Seen {
    /// Polls made.
    polls: u64,
    /// When the last program's verification ended `Passed` (the wait's
    /// start as zero), if each one's did.
    verified: Option<Duration>,
    /// The largest TracerProgram status seen, as JSON bytes.
    largest_status: usize,
}

/// Polls until every program is Healthy with `version` as its newest
/// registry entry.
async fn wait_all(
    api: &Api<TracerProgram>,
    version: &str,
    programs: usize,
    limit: Duration,
) -> Seen {
    let start = Instant::now();
    let deadline = start + limit;
    let mut seen = Seen::default();
    let mut verified: BTreeMap<String, Duration> = BTreeMap::new();
    loop {
        seen.polls += 1;
        let list = api.list(&ListParams::default()).await.expect("list");
        for tp in &list.items {
            let Some(st) = tp.status.as_ref() else {
                continue;
            };
            let bytes = serde_json::to_vec(st).map_or(0, |b| b.len());
            seen.largest_status = seen.largest_status.max(bytes);
            let passed = st
                .verification
                .as_ref()
                .is_some_and(|v| v.result == "Passed" && v.pending == 0);
            let name = tp.metadata.name.clone().unwrap_or_default();
            if passed && st.history.first().is_some_and(|h| h.version == version) {
                verified.entry(name).or_insert_with(|| start.elapsed());
            }
        }
        if verified.len() == programs {
            seen.verified = verified.values().max().copied();
        }
        let done = list
            .items
            .iter()
            .filter(|tp| {
                tp.status.as_ref().is_some_and(|s| {
                    s.phase == Some(Phase::Healthy)
                        && s.history.first().is_some_and(|h| h.version == version)
                        && s.observed_generation == tp.metadata.generation
                })
            })
            .count();
        if done == programs {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "only {done}/{programs} programs reached {version} in {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn apply_all(
    api: &Api<TracerProgram>,
    names: &[String],
    version: &str,
    s: &serde_json::Value,
) {
    for n in names {
        api.patch(
            n,
            &PatchParams::apply("bench").force(),
            &Patch::Apply(spec(n, version, s.clone())),
        )
        .await
        .expect("apply");
    }
}

/// The operator's process (group), stopped on drop: SIGTERM first so a
/// profiler wrapping it writes its data, SIGKILL after 30 s.
struct Operator(std::process::Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let group = -(self.0.id() as i32);
        // SAFETY: kill(2) with a negative pid signals that process group;
        // it touches no memory of this process.
        unsafe { libc::kill(group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            // SAFETY: as above; signal 0 only asks whether any member lives.
            if unsafe { libc::kill(group, 0) } != 0 {
                break;
            }
            let _ = self.0.try_wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let nodes_n = env_or("FLEET_NODES", 1000) as usize;
    let programs_n = env_or("FLEET_PROGRAMS", 20) as usize;
    let pause = env_or("FLEET_PAUSE_SECONDS", 10);

    let cp = ControlPlane::start().await.expect("control plane");
    cp.install_crds().expect("crds");
    let client = cp.client().await.expect("client");
    let dir = tempfile::tempdir().expect("tempdir");

    let t = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    let mut creates = Vec::new();
    for i in 0..nodes_n {
        let socket = dir.path().join(format!("n{i}.sock"));
        start_agent(socket.clone());
        let nodes = nodes.clone();
        creates.push(async move {
            let node: Node = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": format!("sim-{i:04}"),
                    "annotations": {"bpfleet.dev/agent-endpoint": format!("unix://{}", socket.display())}
                },
                "status": {"capacity": {"cpu": "8"}}
            }))
            .unwrap();
            nodes
                .create(&PostParams::default(), &node)
                .await
                .expect("create node");
        });
    }
    futures::stream::iter(creates)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    println!(
        "fleet: {nodes_n} simulated agents and Node objects in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let port = bpfleet_testsupport::free_port();
    let log_path = dir.path().join("operator.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // FLEET_OPERATOR_WRAPPER (e.g. "heaptrack -o /tmp/op") runs the
    // operator under a profiler; its RSS is then the wrapper's business.
    let wrapper = std::env::var("FLEET_OPERATOR_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut operator = match words.next() {
        Some(program) => {
            let mut c = std::process::Command::new(program);
            c.args(words).arg(env!("CARGO_BIN_EXE_bpfleet-operator"));
            c
        }
        None => std::process::Command::new(env!("CARGO_BIN_EXE_bpfleet-operator")),
    };
    // Its own process group: stopping it stops a wrapper's child too, and
    // the guard stops it when the bench panics half way.
    let operator = operator
        .process_group(0)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("RUST_LOG", "warn")
        .args(["--namespace", "default", "--metrics-listen"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("operator");
    let operator = Operator(operator);
    let metrics = format!("http://127.0.0.1:{port}/metrics");

    let api: Api<TracerProgram> = Api::all(client.clone());
    let names: Vec<String> = (0..programs_n).map(|i| format!("prog-{i:02}")).collect();
    let t = Instant::now();
    apply_all(&api, &names, "1.0.0", &json!({"immediate": {}})).await;
    wait_all(&api, "1.0.0", programs_n, Duration::from_secs(600)).await;
    println!(
        "v1 immediate: {programs_n} programs on {nodes_n} nodes in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // Like a DaemonSet's maxUnavailable: a tenth of the fleet switches at once.
    let max_unavailable = (nodes_n / 10).max(1);
    let canary = json!({"canary": {"maxUnavailable": max_unavailable, "steps": [
        {"setNodePercent": 10}, {"pause": {"duration": format!("{pause}s")}},
        {"setNodePercent": 50}, {"pause": {"duration": format!("{pause}s")}},
        {"setNodePercent": 100}
    ]}});
    let reconciles0 = scrape_sum(&metrics, "bpfleet_operator_reconciles_total").await;
    let requests0 = apiserver_requests(&client).await;
    let calls0 = agent_calls(&metrics).await;
    let t = Instant::now();
    apply_all(&api, &names, "2.0.0", &canary).await;
    let seen = wait_all(&api, "2.0.0", programs_n, Duration::from_secs(900)).await;
    let polls = seen.polls;
    let took = t.elapsed().as_secs_f64();
    let reconciles = scrape_sum(&metrics, "bpfleet_operator_reconciles_total").await - reconciles0;
    let calls = agent_calls(&metrics).await;
    // Less the bench's own calls: one apply per program, one list per poll,
    // and the metrics read itself.
    let own = programs_n as f64 + polls as f64 + 1.0;
    let requests = apiserver_requests(&client).await - requests0 - own;
    let steps = (programs_n * 5) as f64;
    let (rss, hwm) = rss_kib(operator.0.id());
    let pauses = 2 * pause;
    println!(
        "v2 canary (10% / pause {pause}s / 50% / pause {pause}s / 100%, maxUnavailable {max_unavailable}), {programs_n} programs x {nodes_n} nodes:"
    );
    println!(
        "  time to complete     {took:.1}s (configured pauses {pauses}s, overhead {:+.1}s)",
        took - pauses as f64
    );
    match seen.verified {
        Some(v) => println!(
            "  verify everywhere    {:.1}s until every program's candidate was loaded on all {nodes_n} nodes (polled every 0.5 s)",
            v.as_secs_f64()
        ),
        None => println!("  verify everywhere    not seen passing for every program"),
    }
    println!(
        "  largest status       {:.1} KiB (JSON)",
        seen.largest_status as f64 / 1024.0
    );
    println!(
        "  reconciles           {reconciles:.0} ({:.1}/s)",
        reconciles / took
    );
    println!(
        "  apiserver requests   {requests:.0} by the operator ({:.1} per rollout step, {steps:.0} steps)",
        requests / steps
    );
    let pairs = (programs_n * nodes_n) as f64;
    let per_call: Vec<String> = calls
        .iter()
        .map(|(c, n)| (c, n - calls0.get(c).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .map(|(c, n)| format!("{c} {:.2}", n / pairs))
        .collect();
    println!(
        "  agent calls          per program and node: {}",
        per_call.join(", ")
    );
    println!(
        "  operator RSS         {:.1} MiB now, {:.1} MiB peak",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    drop(operator);
    let warnings = std::fs::read_to_string(&log_path).unwrap_or_default();
    let n = warnings
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    // The temporary directory goes with the bench; FLEET_OPERATOR_LOG
    // keeps a copy of the operator's log.
    let kept = match std::env::var_os("FLEET_OPERATOR_LOG") {
        Some(to) => {
            std::fs::copy(&log_path, &to).expect("copy the operator log");
            PathBuf::from(to)
        }
        None => log_path,
    };
    println!("  operator warnings    {n} (log: {})", kept.display());
}
