//! The chart on a real cluster: the harness's two nodes (e2e/cluster: a
//! kubelet, a containerd and a kube-proxy each, built from the Go module
//! proxy and Debian), the images built from `Dockerfile.operator` and
//! `Dockerfile.agent` by buildah (e2e/cluster/images.sh), and
//! `helm install` as docs/packaging.md says; then the rollouts through the
//! real pods: the HTTP tracer counting a server pod's traffic, labelled
//! from the real kubelet's pod directory; a canary on one of the two nodes
//! with an agent pod deleted in its pause, promoted; a faulty revision
//! rolled back by its analysis; `helm upgrade` to another agent image
//! without a lost count; `helm uninstall`, which leaves what
//! docs/packaging.md says. Everything asserted here is read from the
//! cluster (pod phases, restarts, the Lease, the program's status and
//! events), from the agents (List over their pods' mTLS endpoint, their
//! metrics) or from the kernel (the agents' processes in /proc, `bpftool`
//! on the host and in each node's bpffs).
//!
//! Runs as root. The cluster is started by the test and stopped when it
//! ends, also when it fails (`cluster.sh down` removes what `up` made).

// In a test, a panic is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine;
use bpfleet_proto::v1 as pb;
use bpfleet_testsupport::metrics;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[path = "shared/tracer_spec.rs"]
mod tracer_spec;

const NAMESPACE: &str = "bpfleet-system";
const NODES: [&str; 2] = ["node-a", "node-b"];
/// The chart's agent ports (values.yaml: agent.grpcPort, agent.metricsPort).
const AGENT_GRPC: u16 = 50051;
const AGENT_METRICS: u16 = 9091;
/// Where the chart's agents pin (values.yaml: agent.pinRoot), on each
/// node's own bpffs.
const PIN_ROOT: &str = "/sys/fs/bpf/bpfleet";
/// Capability numbers (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

fn tool(name: &str) -> PathBuf {
    std::env::var_os("BPFLEET_CONTROLPLANE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/controlplane/bin"))
        .join(name)
}

fn run_dir() -> PathBuf {
    root().join(".run/cluster")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a command to success and returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?} failed:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn script(name: &str, arg: Option<&str>) -> Command {
    let mut c = Command::new("bash");
    c.arg(root().join("e2e/cluster").join(name));
    c.args(arg);
    c
}

/// The running cluster; dropping it runs `cluster.sh down`.
struct Cluster;

impl Cluster {
    fn up() -> Cluster {
        // Leftovers of an earlier, interrupted run go first.
        ok(&mut script("cluster.sh", Some("down")));
        let c = Cluster;
        // The cluster, not bpfleet, is what `up` starts: one failed start
        // (seen once, in the first start of a fresh CI clone, a node never
        // Ready within 180 s) is reported with its logs and tried again
        // from scratch; a second failure fails the test.
        let first = script("cluster.sh", Some("up"))
            .output()
            .expect("bash runs");
        if !first.status.success() {
            eprintln!(
                "cluster.sh up failed; trying once more after down:\n{}",
                text(&first)
            );
            ok(&mut script("cluster.sh", Some("down")));
            ok(&mut script("cluster.sh", Some("up")));
        }
        c
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(tool("kubectl"))
            .arg("--kubeconfig")
            .arg(run_dir().join("admin.kubeconfig"))
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(o.status.success(), "kubectl {args:?}:\n{}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&a)).expect("kubectl prints JSON")
    }

    /// `kubectl apply --server-side` of one object.
    fn apply(&self, object: &Value) {
        let file = run_dir().join("apply.json");
        std::fs::write(&file, object.to_string()).expect("write");
        self.kubectl_ok(&[
            "apply",
            "--server-side",
            "-f",
            file.to_str().expect("utf-8"),
        ]);
    }

    fn helm(&self, args: &[&str]) -> String {
        ok(Command::new(tool("helm"))
            .arg("--kubeconfig")
            .arg(run_dir().join("admin.kubeconfig"))
            .args(args))
    }

    /// What a failure needs to be understood: pods, events, the
    /// components' last log lines.
    fn diagnose(&self) -> String {
        let mut out = String::new();
        for args in [
            &["get", "pods", "-A", "-o", "wide"][..],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"][..],
            &[
                "logs",
                "-n",
                NAMESPACE,
                "-l",
                "app.kubernetes.io/component=operator",
                "--tail=30",
            ][..],
            &[
                "logs",
                "-n",
                NAMESPACE,
                "-l",
                "app.kubernetes.io/component=agent",
                "--tail=30",
            ][..],
        ] {
            out.push_str(&format!(
                "--- kubectl {}\n{}\n",
                args.join(" "),
                text(&self.kubectl(args))
            ));
        }
        out
    }

    /// Polls `probe` for up to `secs` seconds until it gives Some.
    fn wait<T>(&self, what: &str, secs: u64, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = probe() {
                return v;
            }
            if Instant::now() > deadline {
                panic!("never: {what} (within {secs}s)\n{}", self.diagnose());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let o = script("cluster.sh", Some("down")).output();
        if let Ok(o) = o
            && !o.status.success()
        {
            eprintln!("cluster.sh down failed:\n{}", text(&o));
        }
    }
}

/// `bpftool prog show`: id and name of every program loaded on the machine.
fn programs() -> Vec<(u64, String)> {
    let out = ok(Command::new("bpftool").args(["-j", "prog", "show"]));
    let v: Value = serde_json::from_str(&out).expect("bpftool prints JSON");
    v.as_array()
        .expect("a list")
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap_or(0),
                p["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// Host PIDs of the processes whose command name is `comm`.
fn pids_of(comm: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(e) = e else { continue };
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm)
        {
            pids.push(pid);
        }
    }
    pids
}

/// A field of /proc/PID/status.
fn status_field(pid: u32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

fn cap_mask(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << c))
}

/// Whether the process's root filesystem is mounted read-only.
fn root_read_only(pid: u32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    info.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 5 && f[4] == "/" && f[5].split(',').any(|o| o == "ro")
    })
}

/// Ids of the HTTP tracer's programs loaded since `before`, by name.
fn tracer_program_ids(before: &BTreeSet<u64>) -> BTreeSet<(String, u64)> {
    let names: Vec<String> = bpfleet_tracer::PROGRAMS
        .iter()
        .map(|(p, _)| p.chars().take(15).collect())
        .collect();
    programs()
        .into_iter()
        .filter(|(id, n)| !before.contains(id) && names.contains(n))
        .map(|(id, n)| (n, id))
        .collect()
}

/// Runs `args` in node `n`'s network namespace (`nsenter`), to success.
fn in_node_net(n: &str, args: &[&str]) -> String {
    ok(Command::new("nsenter")
        .arg(format!("--net=/run/netns/bpfleet-{n}"))
        .args(args))
}

/// Runs `args` in node `n`'s mount namespace (its bpffs, its pins), to
/// success: entered through a process node.sh started in it.
fn in_node_mounts(n: &str, args: &[&str]) -> String {
    let want = std::fs::read_to_string(run_dir().join(n).join("mntns"))
        .expect("node.sh records its mount namespace");
    let want = want.trim();
    let pid = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                .is_ok_and(|l| l.to_string_lossy() == want)
        })
        .unwrap_or_else(|| panic!("no process in {n}'s mount namespace {want}"));
    ok(Command::new("nsenter")
        .arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .args(args))
}

/// A running agent pod: name, UID, pod IP.
#[derive(Clone, Debug, PartialEq)]
struct AgentPod {
    name: String,
    uid: String,
    ip: String,
    image: String,
}

/// The agent pod on node `n` that runs and is not being deleted, if one
/// is ready.
fn agent_pod(cluster: &Cluster, n: &str) -> Option<AgentPod> {
    let v = cluster.json(&[
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        "app.kubernetes.io/component=agent",
        "--field-selector",
        &format!("spec.nodeName={n}"),
    ]);
    v["items"].as_array()?.iter().find_map(|p| {
        let ready = p["status"]["containerStatuses"][0]["ready"] == true;
        (p["metadata"]["deletionTimestamp"].is_null() && ready).then(|| AgentPod {
            name: p["metadata"]["name"].as_str().unwrap_or("").into(),
            uid: p["metadata"]["uid"].as_str().unwrap_or("").into(),
            ip: p["status"]["podIP"].as_str().unwrap_or("").into(),
            image: p["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .into(),
        })
    })
}

/// The host pid of the agent process of pod `uid` (its cgroup names the
/// pod).
fn agent_pid(uid: &str) -> Option<u32> {
    pids_of("bpfleet-agent").into_iter().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(uid))
    })
}

/// The agent's `/metrics`, fetched inside its node's network.
fn agent_metrics(n: &str, pod: &AgentPod) -> Vec<metrics::Sample> {
    metrics::parse(&in_node_net(
        n,
        &[
            "curl",
            "-sf",
            &format!("http://{}:{AGENT_METRICS}/metrics", pod.ip),
        ],
    ))
}

/// The operator's client certificate and the agents' CA, from the
/// release's Secrets (Helm generated them).
struct Tls {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    server_name: String,
}

impl Tls {
    fn from_release(cluster: &Cluster) -> Self {
        let secret = |name: &str, key: &str| {
            let v = cluster.json(&["get", "secret", "-n", NAMESPACE, name]);
            base64::engine::general_purpose::STANDARD
                .decode(v["data"][key].as_str().expect("a key of the Secret"))
                .expect("base64")
        };
        Self {
            ca: secret("bpfleet-agent-tls", "ca.crt"),
            cert: secret("bpfleet-operator-tls", "tls.crt"),
            key: secret("bpfleet-operator-tls", "tls.key"),
            // values.yaml: tls.agentName, the agents' certificate's name.
            server_name: "bpfleet-agent".into(),
        }
    }
}

/// The agent's List, asked as the operator asks it: over the pod's mTLS
/// endpoint with the operator's certificate, from inside node `n`'s
/// network (a thread moved into it, a real tonic client).
fn agent_list(n: &str, pod: &AgentPod, tls: &Tls) -> pb::ListResponse {
    let netns = format!("/run/netns/bpfleet-{n}");
    let addr = format!("https://{}:{AGENT_GRPC}", pod.ip);
    let (ca, cert, key, name) = (
        tls.ca.clone(),
        tls.cert.clone(),
        tls.key.clone(),
        tls.server_name.clone(),
    );
    std::thread::spawn(move || {
        bpfleet_testsupport::netns::enter(&netns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async {
            let mut c = bpfleet_agent::cli::connect_tls(&addr, &ca, Some((cert, key)), &name)
                .await
                .unwrap_or_else(|e| panic!("mTLS to {addr}: {e}"));
            c.list(pb::ListRequest {
                program: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("List at {addr}: {e}"))
            .into_inner()
        })
    })
    .join()
    .expect("the List thread")
}

/// A program's active revision and its kernel program ids, as an agent
/// lists them.
fn active(list: &pb::ListResponse, program: &str) -> Option<(String, Vec<u32>)> {
    let p = list.programs.iter().find(|p| p.program == program)?;
    let ids = p
        .revisions
        .iter()
        .find(|r| r.revision == p.active_revision)
        .map(|r| r.prog_ids.clone())
        .unwrap_or_default();
    Some((p.active_revision.clone(), ids))
}

/// `n` GET requests for `path` to the server pod, from node-b (another
/// node than the pod's): their status codes.
fn requests(web_ip: &str, path: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            in_node_net(
                "node-b",
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    &format!("http://{web_ip}:8080{path}"),
                ],
            )
            .trim()
            .parse()
            .unwrap_or(0)
        })
        .collect()
}

/// Server-side requests of the web pod the agent counted, by route and
/// status.
fn web_count(samples: &[metrics::Sample], route: &str, code: &str) -> f64 {
    metrics::sum(
        samples,
        "http_server_request_duration_seconds_count",
        &[
            ("k8s_namespace_name", "shop"),
            ("k8s_pod_name", "web"),
            ("service_name", "web"),
            ("http_route", route),
            ("http_response_status_code", code),
        ],
    )
}

/// The server pod the tracer watches.
struct Web {
    ip: String,
}

/// A server pod (httpd.c, built into an image by images.sh) in namespace
/// `shop` on node-a, requested from node-b: node-a's agent counts its
/// requests per route and status, labelled with the pod's namespace, name
/// and container from the real kubelet's /var/log/pods.
fn web_traffic_is_traced_and_labelled(cluster: &Cluster) -> Web {
    cluster.kubectl_ok(&["create", "namespace", "shop"]);
    cluster.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "node-a"},
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "web",
                "image": "localhost/bpfleet/httpd:local",
                "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 2},
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "readOnlyRootFilesystem": true,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }));
    let ip = cluster.wait("the web pod ready", 120, || {
        let v = cluster.json(&["get", "pod", "-n", "shop", "web"]);
        let ready = v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then(|| v["status"]["podIP"].as_str().map(str::to_string))?
    });
    let dirs: Vec<String> = std::fs::read_dir(run_dir().join("node-a/pods"))
        .expect("node-a's /var/log/pods")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(
        dirs.iter().any(|d| d.starts_with("shop_web_")),
        "the kubelet wrote the pod's log directory: {dirs:?}"
    );
    assert_eq!(requests(&ip, "/", 20), vec![200; 20]);
    assert_eq!(requests(&ip, "/missing", 5), vec![404; 5]);
    let pod = agent_pod(cluster, "node-a").expect("node-a's agent");
    cluster.wait("node-a's agent counted the web pod's requests", 60, || {
        let m = agent_metrics("node-a", &pod);
        (web_count(&m, "/", "200") == 20.0 && web_count(&m, "/missing", "404") == 5.0).then_some(())
    });
    Web { ip }
}

/// The syscount revisions' counting slots (bpf/progs/syscount_*.bpf.c:
/// v1 counts into slot 0, v2 into 1, the faulty one into 2) on node `n`:
/// which grew over a second and a half, read from the persistent `counts`
/// map pinned on the node's own bpffs.
fn growing_slots(n: &str) -> Vec<usize> {
    let read = || -> Vec<u64> {
        let out = in_node_mounts(
            n,
            &[
                "bpftool",
                "-j",
                "map",
                "dump",
                "pinned",
                &format!("{PIN_ROOT}/syscount/_map_counts"),
            ],
        );
        let v: Value = serde_json::from_str(&out).expect("bpftool prints JSON");
        let mut slots = vec![0u64; 3];
        for e in v.as_array().expect("entries") {
            let k = e["formatted"]["key"].as_u64().expect("key") as usize;
            if k < 3 {
                slots[k] = e["formatted"]["value"].as_u64().expect("value");
            }
        }
        slots
    };
    let a = read();
    std::thread::sleep(Duration::from_millis(1500));
    let b = read();
    (0..3).filter(|i| b[*i] > a[*i]).collect()
}

fn syscount(version: &str, object: &str, strategy: Value) -> Value {
    let bytes = bpfleet_bpf::OBJECTS
        .iter()
        .find(|(n, _)| *n == object)
        .expect("an example object")
        .1;
    json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "TracerProgram",
        "metadata": {"name": "syscount"},
        "spec": {
            "version": version,
            "bytecode": {"file": {"path": format!("/var/lib/bpfleet/objects/{object}")}},
            "sha256": hex::encode(Sha256::digest(bytes)),
            "programs": [{"name": "count_getppid", "type": "Tracepoint",
                          "tracepoint": {"category": "syscalls", "name": "sys_enter_getppid"}}],
            "persistentMaps": ["counts"],
            "strategy": strategy,
        },
    })
}

/// The demo's canary and rollback, on the cluster: syscount v1 on both
/// nodes; v2 by canary (half the nodes, then a pause without end) touches
/// exactly one node, which the kernel and that node's agent confirm; the
/// canary node's agent pod is deleted in the pause, the DaemonSet makes
/// another, which adopts the programs as they run (same ids, still
/// counting) and the rollout goes on when promoted; then a faulty v3 fails
/// its analysis on the canary node and every node is back on v2.
fn canary_survives_an_agent_pod_deletion_and_a_bad_revision_rolls_back(
    cluster: &Cluster,
    tls: &Tls,
    before: &BTreeSet<u64>,
) {
    for n in NODES {
        let dir = run_dir().join(n).join("bpfleet/objects");
        for (name, bytes) in bpfleet_bpf::OBJECTS {
            if name.starts_with("syscount_") {
                std::fs::write(dir.join(name), bytes).expect("object");
            }
        }
    }
    // getppid(2), which syscount counts, called all the time.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SAFETY: getppid has no preconditions.
                unsafe { libc::getppid() };
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    cluster.apply(&json!({
        "apiVersion": "bpfleet.dev/v1alpha1", "kind": "TracerPolicy",
        "metadata": {"name": "syscount-health"},
        "spec": {
            "targets": {"programNames": ["syscount"]},
            "health": {"maxProgramFailures": 0, "minSamples": 1, "consecutiveFailureLimit": 1},
        },
    }));
    let status = || cluster.json(&["get", "tracerprogram", "syscount"])["status"].clone();
    cluster.apply(&syscount(
        "1.0.0",
        "syscount_v1.bpf.o",
        json!({"immediate": {}}),
    ));
    let v1 = cluster.wait("syscount v1 Healthy on both nodes", 120, || {
        let s = status();
        (s["phase"] == "Healthy" && s["nodes"]["ready"] == 2)
            .then(|| s["currentRevision"].as_str().map(str::to_string))?
    });

    cluster.apply(&syscount(
        "2.0.0",
        "syscount_v2.bpf.o",
        json!({"canary": {"steps": [{"setNodePercent": 50}, {"pause": {}}, {"setNodePercent": 100}]}}),
    ));
    let v2 = cluster.wait("v2 paused on one node of two", 120, || {
        let s = status();
        (s["phase"] == "Paused" && s["nodes"]["updated"] == 1 && s["nodes"]["desired"] == 2)
            .then(|| s["currentRevision"].as_str().map(str::to_string))?
    });
    assert_ne!(v1, v2);
    let mut canary = None;
    for n in NODES {
        let pod = agent_pod(cluster, n).expect("an agent");
        let (rev, _) = active(&agent_list(n, &pod, tls), "syscount").expect("syscount listed");
        let slots = growing_slots(n);
        if rev == v2 {
            assert_eq!(slots, vec![1], "{n} runs v2: only its slot grows");
            assert!(canary.replace(n).is_none(), "one canary node");
        } else {
            assert_eq!(rev, v1, "{n}");
            assert_eq!(slots, vec![0], "{n} runs v1: only its slot grows");
        }
    }
    let canary = canary.expect("a canary node");

    // The canary node's agent pod deleted in the pause.
    let old = agent_pod(cluster, canary).expect("the canary's agent");
    let (_, ids) = active(&agent_list(canary, &old, tls), "syscount").expect("listed");
    cluster.kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        NAMESPACE,
        &old.name,
        "--wait=true",
        "--timeout=60s",
    ]);
    let new = cluster.wait("the DaemonSet's new agent on the canary node", 120, || {
        agent_pod(cluster, canary).filter(|p| p.uid != old.uid)
    });
    let (rev, new_ids) = active(&agent_list(canary, &new, tls), "syscount").expect("re-adopted");
    assert_eq!(
        (rev.as_str(), &new_ids),
        (v2.as_str(), &ids),
        "the same programs, adopted"
    );
    assert_eq!(
        growing_slots(canary),
        vec![1],
        "v2 counted on through the replacement"
    );
    let s = status();
    assert_eq!(
        (s["phase"].as_str(), s["nodes"]["updated"].as_i64()),
        (Some("Paused"), Some(1))
    );

    cluster.kubectl_ok(&[
        "annotate",
        "tracerprogram",
        "syscount",
        "bpfleet.dev/promote=cluster-test",
        "--overwrite",
    ]);
    cluster.wait("v2 promoted to both nodes", 120, || {
        let s = status();
        (s["phase"] == "Healthy"
            && s["nodes"]["updated"] == 2
            && s["stableRevision"] == v2.as_str())
        .then_some(())
    });
    for n in NODES {
        let pod = agent_pod(cluster, n).expect("an agent");
        assert_eq!(
            active(&agent_list(n, &pod, tls), "syscount").map(|a| a.0),
            Some(v2.clone()),
            "{n}"
        );
        assert_eq!(growing_slots(n), vec![1], "{n}");
    }

    // A revision that fails on every event: its analysis fails on the
    // canary node and the operator takes every node back to v2.
    cluster.apply(&syscount(
        "3.0.0",
        "syscount_faulty.bpf.o",
        json!({"canary": {"steps": [{"setNodePercent": 50},
            {"analysis": {"durationSeconds": 12, "intervalSeconds": 3}}, {"setNodePercent": 100}]}}),
    ));
    cluster.wait("v3 aborted", 180, || {
        (status()["phase"] == "Aborted").then_some(())
    });
    let events = cluster.kubectl_ok(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=syscount",
        "-o",
        "custom-columns=REASON:.reason,MESSAGE:.message",
    ]);
    for reason in ["AnalysisFailed", "RolledBack"] {
        assert!(events.contains(reason), "no {reason} event:\n{events}");
    }
    cluster.wait("both nodes back on v2", 60, || {
        NODES
            .iter()
            .all(|n| {
                agent_pod(cluster, n).is_some_and(|p| {
                    active(&agent_list(n, &p, tls), "syscount").map(|a| a.0) == Some(v2.clone())
                })
            })
            .then_some(())
    });
    for n in NODES {
        assert_eq!(
            growing_slots(n),
            vec![1],
            "{n}: v2 counts, the faulty one no more"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    calls.join().expect("the getppid thread");

    // Deleted: unloaded from both nodes.
    cluster.kubectl_ok(&[
        "delete",
        "tracerprogram",
        "syscount",
        "--wait=true",
        "--timeout=120s",
    ]);
    cluster.wait("syscount unloaded", 60, || {
        (!programs()
            .iter()
            .any(|(id, n)| !before.contains(id) && n == "count_getppid"))
        .then_some(())
    });
}

/// `helm upgrade` to the second agent image (images.sh's `next`): the
/// DaemonSet replaces both agents; the node-a agent, stopped, hands its
/// counts over; requests made while it is gone are reported by the new
/// agent, exactly; the tracer's programs were never reloaded.
fn helm_upgrade_of_the_agents_loses_no_count(cluster: &Cluster, web: &Web, tls: &Tls) {
    let old = agent_pod(cluster, "node-a").expect("node-a's agent");
    let old_pid = agent_pid(&old.uid).expect("its process");
    // Everything before is read by the old agent (it reads every second;
    // its figure stays put).
    let mut last = -1.0;
    cluster.wait("the old agent's count settled", 30, || {
        std::thread::sleep(Duration::from_millis(1500));
        let now = web_count(&agent_metrics("node-a", &old), "/", "200");
        (std::mem::replace(&mut last, now) == now).then_some(())
    });
    let operators = || -> BTreeSet<String> {
        cluster.json(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/component=operator",
        ])["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    let tls_data = || {
        ["bpfleet-agent-tls", "bpfleet-operator-tls"]
            .map(|s| cluster.json(&["get", "secret", "-n", NAMESPACE, s])["data"].clone())
    };
    let (operators_before, tls_before) = (operators(), tls_data());
    let chart = root().join("charts/bpfleet");
    let kubeconfig = run_dir().join("admin.kubeconfig");
    let upgrade = std::thread::spawn(move || {
        Command::new(tool("helm"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["upgrade", "bpfleet"])
            .arg(chart)
            .args([
                "-n",
                NAMESPACE,
                "--reuse-values",
                "--set",
                "agent.image.tag=next",
            ])
            .args(["--wait", "--timeout", "300s"])
            .output()
            .expect("helm runs")
    });
    cluster.wait("node-a's old agent stopped", 180, || {
        (!Path::new(&format!("/proc/{old_pid}")).exists()).then_some(())
    });
    // No agent on node-a now (or one just starting).
    let during = requests(&web.ip, "/", 30);
    let during_end = ok(Command::new("date").args(["-u", "+%FT%T.%6NZ"]));
    let o = upgrade.join().expect("the helm thread");
    assert!(
        o.status.success(),
        "helm upgrade:\n{}\n{}",
        text(&o),
        cluster.diagnose()
    );
    cluster.wait("both agents on the new image", 180, || {
        let ds = cluster.json(&["get", "daemonset", "-n", NAMESPACE, "bpfleet-agent"]);
        let s = &ds["status"];
        let done = s["observedGeneration"] == ds["metadata"]["generation"]
            && s["updatedNumberScheduled"] == 2
            && s["numberAvailable"] == 2;
        (done
            && NODES
                .iter()
                .all(|n| agent_pod(cluster, n).is_some_and(|p| p.image.ends_with(":next"))))
        .then_some(())
    });
    // Only the agents changed: the certificates are kept, so the
    // operators' pods (whose template carries their checksum) stay.
    assert_eq!(tls_data(), tls_before, "helm upgrade kept the certificates");
    assert_eq!(
        operators(),
        operators_before,
        "the operator pods were not replaced"
    );
    let after = requests(&web.ip, "/", 10);
    assert_eq!((during, after), (vec![200; 30], vec![200; 10]));
    let new = agent_pod(cluster, "node-a").expect("node-a's new agent");
    assert_ne!(new.uid, old.uid);
    cluster.wait(
        "node-a's new agent reported the 40 requests since",
        60,
        || (web_count(&agent_metrics("node-a", &new), "/", "200") == 40.0).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        web_count(&agent_metrics("node-a", &new), "/", "200"),
        40.0,
        "counted once"
    );
    let handover = run_dir().join("node-a/bpfleet/http-tracer-http-tracer.handover");
    assert!(!handover.exists(), "the new agent took the handover");
    let log = cluster.kubectl_ok(&["logs", "-n", NAMESPACE, &new.name]);
    let taken = log
        .lines()
        .find(|l| l.contains("counts taken over from the previous agent"))
        .unwrap_or_else(|| panic!("the new agent did not take the old one's counts:\n{log}"));
    let started = log
        .lines()
        .find(|l| l.contains("HTTP tracer reader started"))
        .unwrap_or("");
    // For the record: whether the 30 requests fell before the new reader
    // (they are counted either way; before it, only the handover counts
    // them).
    eprintln!(
        "30 requests done at {}; the new agent: {taken} / {started}",
        during_end.trim()
    );
    // The new agent runs the tracer it adopted.
    assert!(active(&agent_list("node-a", &new, tls), "http-tracer").is_some());
}

#[test]
fn helm_install_on_a_real_cluster_runs_the_images_and_rolls_a_program_out() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "starts a cluster: run as root"
    );
    let started = Instant::now();
    ok(&mut script("images.sh", None));
    eprintln!("images ready after {:?}", started.elapsed());
    let before: BTreeSet<u64> = programs().into_iter().map(|(id, _)| id).collect();
    let cluster = Cluster::up();
    eprintln!("cluster up after {:?}", started.elapsed());

    // The release namespace as docs/packaging.md says, and the chart with
    // its defaults: the images built here (never pulled), unsigned objects
    // allowed (the tracer object here is not signed), and no
    // CAP_SYS_RESOURCE, which this machine's runtime cannot grant.
    cluster.kubectl_ok(&["create", "namespace", NAMESPACE]);
    cluster.kubectl_ok(&[
        "label",
        "namespace",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=privileged",
    ]);
    let chart = root().join("charts/bpfleet");
    let mut install = vec![
        "install",
        "bpfleet",
        chart.to_str().expect("utf-8 path"),
        "-n",
        NAMESPACE,
        "--wait",
        "--timeout",
        "300s",
    ];
    let sets = [
        "operator.image.repository=localhost/bpfleet/bpfleet-operator",
        "operator.image.tag=dev",
        "operator.image.pullPolicy=Never",
        "agent.image.repository=localhost/bpfleet/bpfleet-agent",
        "agent.image.tag=dev",
        "agent.image.pullPolicy=Never",
        "agent.grantSysResource=false",
        "agent.signatures.allowUnsigned=true",
    ];
    for s in &sets {
        install.extend(["--set", s]);
    }
    let o = Command::new(tool("helm"))
        .arg("--kubeconfig")
        .arg(run_dir().join("admin.kubeconfig"))
        .args(&install)
        .output()
        .expect("helm runs");
    assert!(
        o.status.success(),
        "helm install:\n{}\n{}",
        text(&o),
        cluster.diagnose()
    );
    eprintln!("helm install done after {:?}", started.elapsed());

    // Ready: two operator replicas, an agent on each node, no restart.
    // (helm's --wait counts a DaemonSet ready with maxUnavailable pods
    // still unready, so the test waits for all of them itself.)
    cluster.wait(
        "both operator replicas and both agents available",
        120,
        || {
            let deploy = cluster.json(&["get", "deployment", "-n", NAMESPACE, "bpfleet-operator"]);
            let ds = cluster.json(&["get", "daemonset", "-n", NAMESPACE, "bpfleet-agent"]);
            (deploy["status"]["availableReplicas"] == 2
                && ds["status"]["desiredNumberScheduled"] == 2
                && ds["status"]["numberAvailable"] == 2)
                .then_some(())
        },
    );
    let pods = cluster.json(&["get", "pods", "-n", NAMESPACE]);
    let pods = pods["items"].as_array().expect("items").clone();
    assert_eq!(pods.len(), 4, "two operators, two agents");
    let mut agent_nodes = BTreeSet::new();
    for p in &pods {
        let name = p["metadata"]["name"].as_str().unwrap_or("");
        assert_eq!(p["status"]["phase"], "Running", "{name}");
        for c in p["status"]["containerStatuses"]
            .as_array()
            .expect("statuses")
        {
            assert_eq!(c["restartCount"], 0, "{name} restarted: {c}");
            assert_eq!(c["ready"], true, "{name}");
        }
        if name.starts_with("bpfleet-agent-") {
            agent_nodes.insert(p["spec"]["nodeName"].as_str().unwrap_or("").to_string());
        }
    }
    assert_eq!(agent_nodes, NODES.iter().map(|n| n.to_string()).collect());

    // The real processes: the agents hold exactly BPF, PERFMON and
    // NET_ADMIN (no SYS_ADMIN, no SYS_RESOURCE), under the runtime's
    // default seccomp filter, without new privileges, on a read-only root;
    // the operators run as 65532 with no capability.
    let agents = pids_of("bpfleet-agent");
    assert_eq!(agents.len(), 2, "one agent process per node");
    for pid in &agents {
        let eff = u64::from_str_radix(&status_field(*pid, "CapEff"), 16).expect("hex");
        assert_eq!(
            eff,
            cap_mask(&[CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN]),
            "agent {pid}: CapEff {eff:x}"
        );
        assert_eq!(eff & cap_mask(&[CAP_SYS_ADMIN, CAP_SYS_RESOURCE]), 0);
        assert_eq!(
            status_field(*pid, "Seccomp"),
            "2",
            "agent {pid}: seccomp filter"
        );
        assert_eq!(status_field(*pid, "NoNewPrivs"), "1", "agent {pid}");
        assert!(root_read_only(*pid), "agent {pid}: root is read-only");
    }
    let operators = pids_of("bpfleet-operato");
    assert_eq!(operators.len(), 2, "two operator processes");
    for pid in &operators {
        assert_eq!(
            status_field(*pid, "CapEff"),
            "0000000000000000",
            "operator {pid}"
        );
        assert!(
            status_field(*pid, "Uid").starts_with("65532"),
            "operator {pid}"
        );
        assert_eq!(status_field(*pid, "Seccomp"), "2", "operator {pid}");
        assert!(root_read_only(*pid), "operator {pid}: root is read-only");
    }

    // Leader election: one of the two replicas holds the Lease.
    let operator_pods: Vec<String> = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str())
        .filter(|n| n.starts_with("bpfleet-operator-"))
        .map(str::to_string)
        .collect();
    let holder = cluster.wait("an operator holds the Lease", 60, || {
        let l = cluster.kubectl(&[
            "get",
            "lease",
            "-n",
            NAMESPACE,
            "bpfleet-operator",
            "-o",
            "json",
        ]);
        let v: Value = serde_json::from_slice(&l.stdout).ok()?;
        v["spec"]["holderIdentity"].as_str().map(str::to_string)
    });
    assert!(
        operator_pods
            .iter()
            .any(|p| holder.starts_with(p.as_str()) || holder.contains(p.as_str())),
        "Lease holder {holder} is none of {operator_pods:?}"
    );

    // The HTTP tracer, from each node's object directory (the chart's
    // agent.objectDirs, on the state hostPath), rolled out by the operator
    // to both agents, which it found through their pods and reaches over
    // mTLS with the chart's certificates.
    for n in NODES {
        let dir = run_dir().join(n).join("bpfleet/objects");
        std::fs::create_dir_all(&dir).expect("objects dir");
        std::fs::write(dir.join("http_tracer.bpf.o"), bpfleet_bpf::HTTP_TRACER).expect("object");
    }
    let tp = tracer_spec::http_tracer("/var/lib/bpfleet/objects/http_tracer.bpf.o");
    cluster.apply(&tp);
    cluster.wait("the tracer Healthy on both nodes", 180, || {
        let v = cluster.json(&["get", "tracerprogram", "http-tracer"]);
        let s = &v["status"];
        (s["phase"] == "Healthy" && s["nodes"]["ready"] == 2 && s["nodes"]["desired"] == 2)
            .then_some(())
    });
    let names: BTreeSet<&str> = bpfleet_tracer::PROGRAMS.iter().map(|(p, _)| *p).collect();
    let loaded: Vec<(u64, String)> = programs()
        .into_iter()
        .filter(|(id, _)| !before.contains(id))
        .collect();
    for name in &names {
        // bpftool shows names cut to 15 characters (BPF_OBJ_NAME_LEN).
        let short: String = name.chars().take(15).collect();
        let n = loaded.iter().filter(|(_, l)| *l == short).count();
        assert_eq!(n, 2, "{name}: one per node's agent, in {loaded:?}");
    }
    eprintln!("tracer rolled out after {:?}", started.elapsed());

    let tracer_ids = tracer_program_ids(&before);

    let tls = Tls::from_release(&cluster);
    let web = web_traffic_is_traced_and_labelled(&cluster);
    eprintln!("server pod traced after {:?}", started.elapsed());
    canary_survives_an_agent_pod_deletion_and_a_bad_revision_rolls_back(&cluster, &tls, &before);
    eprintln!("canary and rollback done after {:?}", started.elapsed());
    helm_upgrade_of_the_agents_loses_no_count(&cluster, &web, &tls);
    assert_eq!(
        tracer_program_ids(&before),
        tracer_ids,
        "the tracer's programs stayed loaded through both agents' replacements"
    );
    eprintln!("helm upgrade done after {:?}", started.elapsed());

    // helm uninstall takes the release's objects away and leaves what
    // docs/packaging.md says it leaves: the CRDs and bpfleet's objects (a
    // TracerProgram, its revision history, the TracerPolicy), the
    // operator's Lease, and the programs, loaded and pinned on the nodes.
    cluster.helm(&[
        "uninstall",
        "bpfleet",
        "-n",
        NAMESPACE,
        "--wait",
        "--timeout",
        "120s",
    ]);
    cluster.wait("the release's pods gone", 120, || {
        let v = cluster.json(&["get", "pods", "-n", NAMESPACE]);
        v["items"]
            .as_array()
            .is_some_and(|a| a.is_empty())
            .then_some(())
    });
    assert!(pids_of("bpfleet-agent").is_empty(), "agent processes gone");
    let kinds = cluster.kubectl_ok(&[
        "api-resources",
        "--verbs=list",
        "--namespaced",
        "-o",
        "name",
    ]);
    let kinds: Vec<&str> = kinds.lines().filter(|k| !k.starts_with("events")).collect();
    let revision =
        cluster.json(&["get", "tracerprogram", "http-tracer"])["status"]["currentRevision"]
            .as_str()
            .expect("a revision")
            .to_string();
    let history = format!("controllerrevision.apps/http-tracer-{revision}");
    let expected: BTreeSet<String> = [
        // Kubernetes' own in every namespace.
        "configmap/kube-root-ca.crt",
        "serviceaccount/default",
        // The operator's, not the chart's.
        "lease.coordination.k8s.io/bpfleet-operator",
        history.as_str(),
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    // (What the garbage collector removes after helm, EndpointSlices say,
    // may take a moment.)
    let mut left = BTreeSet::new();
    let settled = Instant::now() + Duration::from_secs(60);
    while Instant::now() < settled {
        left = cluster
            .kubectl_ok(&["get", &kinds.join(","), "-n", NAMESPACE, "-o", "name"])
            .lines()
            .map(str::to_string)
            .collect();
        if left == expected {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(left, expected, "what helm uninstall left in {NAMESPACE}");
    let cluster_wide = cluster.kubectl_ok(&[
        "get",
        "clusterroles,clusterrolebindings,validatingwebhookconfigurations,mutatingwebhookconfigurations",
        "-o",
        "name",
    ]);
    assert!(
        !cluster_wide.contains("bpfleet"),
        "cluster-wide objects left: {cluster_wide}"
    );
    cluster.kubectl_ok(&[
        "get",
        "crd",
        "tracerprograms.bpfleet.dev",
        "tracerpolicies.bpfleet.dev",
    ]);
    cluster.kubectl_ok(&["get", "tracerprogram", "http-tracer"]);
    cluster.kubectl_ok(&["get", "tracerpolicy", "syscount-health"]);
    assert_eq!(
        tracer_program_ids(&before),
        tracer_ids,
        "the programs keep running without the agents"
    );
    for n in NODES {
        let pins = in_node_mounts(n, &["ls", &format!("{PIN_ROOT}/http-tracer/{revision}")]);
        assert!(pins.contains("prog_exit_read"), "{n}: pins left:\n{pins}");
    }

    drop(cluster);
    // Nothing of the cluster left on the machine.
    let netns = ok(Command::new("ip").args(["netns", "list"]));
    assert!(
        !netns.contains("bpfleet-node-"),
        "network namespaces left: {netns}"
    );
    assert!(
        !Command::new("ip")
            .args(["link", "show", "bpfleet0"])
            .output()
            .expect("ip")
            .status
            .success(),
        "the bridge is left"
    );
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").expect("cgroups") {
        let h = hierarchy.expect("entry").path();
        for n in NODES {
            assert!(
                !h.join(format!("bpfleet-{n}")).exists(),
                "cgroup {} left",
                h.display()
            );
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains(".run/cluster"), "mounts left:\n{mounts}");
    for comm in [
        "kubelet",
        "containerd",
        "kube-proxy",
        "containerd-shim",
        "pause",
    ] {
        assert!(pids_of(comm).is_empty(), "{comm} still runs");
    }
    let after: BTreeSet<u64> = programs().into_iter().map(|(id, _)| id).collect();
    assert!(
        after.is_subset(&before),
        "programs left loaded: {:?}",
        after.difference(&before)
    );
    eprintln!("whole test {:?}", started.elapsed());
}
