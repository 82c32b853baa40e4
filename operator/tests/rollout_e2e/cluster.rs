//! The control-plane side of the e2e tests: the test objects (syscount
//! revisions written to files, their TracerProgram), the operator run
//! in-process so a test can kill and restart it, and waits on the
//! TracerProgram's and the TracerPolicy's status.

use std::time::{Duration, Instant};

use bpfleet_api::program::Phase;
use bpfleet_api::{TracerPolicy, TracerProgram};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub(crate) const PROGRAM: &str = "syscount";
pub(crate) const NODES: [&str; 3] = ["node-a", "node-b", "node-c"];

pub(crate) struct Objects {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) paths: std::collections::HashMap<&'static str, (String, String)>,
}

impl Objects {
    pub(crate) fn write() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut paths = std::collections::HashMap::new();
        for (name, bytes) in [
            ("v1", bpfleet_bpf::SYSCOUNT_V1),
            ("v2", bpfleet_bpf::SYSCOUNT_V2),
            ("bad", bpfleet_bpf::SYSCOUNT_BAD),
            ("faulty", bpfleet_bpf::SYSCOUNT_FAULTY),
            ("costly", bpfleet_bpf::SYSCOUNT_COSTLY),
            ("burner", bpfleet_bpf::SYSCOUNT_BURNER),
            ("lossy", bpfleet_bpf::SYSCOUNT_LOSSY),
            ("legacy", bpfleet_bpf::SYSCOUNT_LEGACY),
        ] {
            let p = dir.path().join(format!("syscount_{name}.bpf.o"));
            std::fs::write(&p, bytes).expect("write object");
            let sha = hex::encode(Sha256::digest(bytes));
            paths.insert(name, (p.to_string_lossy().into_owned(), sha));
        }
        Objects { _dir: dir, paths }
    }

    pub(crate) fn spec(&self, which: &'static str, version: &str, strategy: Value) -> Value {
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

/// The operator run in-process, as one replica of the chart's Deployment.
pub(crate) struct Operator {
    pub(crate) task: tokio::task::JoinHandle<()>,
    /// Its metrics and health port on 127.0.0.1.
    pub(crate) metrics_port: u16,
}

impl Operator {
    /// `--namespace default`, a 5 s resync.
    pub(crate) fn start(client: kube::Client) -> Self {
        Self::start_with(&client, "operator", &["--resync-seconds", "5"])
    }

    /// `--namespace default`, metrics on a free loopback port, then
    /// `extra`; the task panics with `name` and the error if the operator
    /// returns one.
    pub(crate) fn start_with(client: &kube::Client, name: &str, extra: &[&str]) -> Self {
        use clap::Parser;
        let metrics_port = bpfleet_testsupport::free_port();
        let listen = format!("127.0.0.1:{metrics_port}");
        let mut argv = vec![
            "bpfleet-operator",
            "--metrics-listen",
            &listen,
            "--namespace",
            "default",
        ];
        argv.extend_from_slice(extra);
        let args = bpfleet_operator::run::Args::parse_from(argv);
        let client = client.clone();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            if let Err(e) = bpfleet_operator::run::run_with(client, args).await {
                panic!("{name} stopped: {e}");
            }
        });
        Operator { task, metrics_port }
    }

    /// Panics when the operator's task has ended (its panic names why).
    pub(crate) fn assert_running(&self, when: &str) {
        assert!(
            !self.task.is_finished(),
            "operator stopped {when}: {:?}",
            self.task
        );
    }

    /// Stops it the hard way: its tasks are dropped mid-flight, as a
    /// killed pod's would be; nothing it held in memory survives.
    pub(crate) fn kill(self) {
        self.task.abort();
    }
}

pub(crate) async fn apply(api: &Api<TracerProgram>, v: &Value) {
    let name = v["metadata"]["name"].as_str().expect("name");
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(v))
        .await
        .expect("apply");
}

pub(crate) fn dump(tp: &TracerProgram) -> String {
    serde_json::to_string_pretty(&tp.status).unwrap_or_default()
}

pub(crate) async fn wait_for(
    api: &Api<TracerProgram>,
    what: &str,
    secs: u64,
    cond: impl Fn(&TracerProgram) -> bool,
) -> TracerProgram {
    wait_for_named(api, PROGRAM, what, secs, cond).await
}

/// [`wait_for`] for the TracerProgram `name`.
pub(crate) async fn wait_for_named(
    api: &Api<TracerProgram>,
    name: &str,
    what: &str,
    secs: u64,
    cond: impl Fn(&TracerProgram) -> bool,
) -> TracerProgram {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let tp = api.get(name).await.expect("get");
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

pub(crate) fn phase(tp: &TracerProgram) -> Option<Phase> {
    tp.status.as_ref().and_then(|s| s.phase)
}

pub(crate) fn stable(tp: &TracerProgram) -> String {
    tp.status
        .as_ref()
        .and_then(|s| s.stable_revision.clone())
        .unwrap_or_default()
}

pub(crate) fn healthy_on(tp: &TracerProgram, rev: &str) -> bool {
    let Some(s) = tp.status.as_ref() else {
        return false;
    };
    phase(tp) == Some(Phase::Healthy)
        && s.stable_revision.as_deref() == Some(rev)
        && s.nodes.updated == 3
        && s.nodes.ready == 3
        && s.observed_generation == tp.metadata.generation
}

pub(crate) fn spec_revision(v: &Value) -> String {
    let spec = serde_json::from_value(v["spec"].clone()).expect("spec");
    bpfleet_operator::revision::revision_id(&spec).expect("revision id")
}

/// Creates the e2e TracerPolicy (`syscount-health`) with `spec`.
pub(crate) async fn create_policy(client: &kube::Client, spec: Value) -> Api<TracerPolicy> {
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
pub(crate) async fn set_policy_config(policies: &Api<TracerPolicy>, config: Value) {
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

/// Merges `health` into the e2e policy's `spec.health` (a `null` removes
/// a gate).
pub(crate) async fn set_policy_health(policies: &Api<TracerPolicy>, health: Value) {
    policies
        .patch(
            "syscount-health",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"health": health}})),
        )
        .await
        .expect("set policy health");
}

/// The e2e policy's Ready condition once it describes the policy's current
/// generation and satisfies `ok`.
pub(crate) async fn policy_settled(
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

/// Deletes the TracerProgram `name` and waits (30 s at most) until its
/// finalizer let it go: the operator unloaded it from every node.
pub(crate) async fn delete_and_wait(api: &Api<TracerProgram>, name: &str) {
    api.delete(name, &kube::api::DeleteParams::default())
        .await
        .expect("delete");
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.get_opt(name).await.expect("get").is_some() {
        assert!(Instant::now() < deadline, "{name} not deleted");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
