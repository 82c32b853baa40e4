//! TracerPolicies with a real agent: a configuration the program cannot
//! honour (a legacy object without the config map's policy slots),
//! reported in the policy's status and not retried in a loop; a program
//! budget refusing the next program; a CPU budget the agent enforces,
//! reported as `BudgetEnforced` on the program and the policy.

use std::time::{Duration, Instant};

use bpfleet_api::TracerProgram;
use bpfleet_api::program::Phase;
use bpfleet_e2e::ControlPlane;
use kube::api::Api;
use libbpf_rs::MapCore;
use serde_json::json;

use super::cluster::*;
use super::nodes::*;

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
    assert_eq!(config_slots(&agent), [500_000, 0, 0, 0, 0, 0]);
    let tp = api.get(PROGRAM).await.expect("get");
    let applied = tp.status.and_then(|s| s.policy).expect("status.policy");
    assert_eq!((applied.configured_nodes, applied.message), (1, None));

    delete_and_wait(&api, PROGRAM).await;
    assert!(agent.pins().is_empty(), "pins left: {:?}", agent.pins());
    operator.kill();
}

/// A policy's `maxPrograms` through the operator and a real agent: two
/// programs it targets on one node with room for one. The second's Load
/// is refused by the agent naming the budget; the program reports the
/// node failing with `BudgetExceeded`; nothing of it is loaded. Deleting
/// the first makes room and the second rolls out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policys_program_budget_refuses_the_next_program() {
    const SECOND: &str = "syscount-second";
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    let client = cp.client().await.expect("client");
    let objects = Objects::write();
    let agent = Agent::start("node-budget");
    agent.register(&client).await;
    create_policy(
        &client,
        json!({"targets": {"programNames": [PROGRAM, SECOND]}, "budgets": {"maxPrograms": 1}}),
    )
    .await;
    let api: Api<TracerProgram> = Api::all(client.clone());
    let operator = Operator::start(client.clone());

    let first = objects.spec("v1", "1.0.0", json!({"immediate": {}}));
    apply(&api, &first).await;
    wait_for(&api, "first healthy", 60, |tp| {
        phase(tp) == Some(Phase::Healthy)
    })
    .await;

    let mut second = objects.spec("v1", "1.0.0", json!({"immediate": {}}));
    second["metadata"]["name"] = json!(SECOND);
    api.patch(
        SECOND,
        &kube::api::PatchParams::apply("test").force(),
        &kube::api::Patch::Apply(&second),
    )
    .await
    .expect("apply second");
    let deadline = Instant::now() + Duration::from_secs(60);
    let failing = loop {
        let tp = api.get(SECOND).await.expect("get");
        let f = tp
            .status
            .as_ref()
            .map(|s| s.failing_nodes.clone())
            .unwrap_or_default();
        if !f.is_empty() {
            break f;
        }
        assert!(Instant::now() < deadline, "no failing node: {}", dump(&tp));
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(failing[0].node, "node-budget");
    assert_eq!(failing[0].reason, "BudgetExceeded", "{failing:?}");
    assert!(
        failing[0]
            .message
            .contains("TracerPolicy syscount-health's budget maxPrograms is 1"),
        "{failing:?}"
    );
    assert!(
        !agent
            .pins()
            .iter()
            .any(|p| p.to_string_lossy().contains(SECOND)),
        "the refused program left pins: {:?}",
        agent.pins()
    );

    // The refused revision is aborted (a failed load is no reason to try
    // again by itself). With room again, a retry rolls it out.
    delete_and_wait(&api, PROGRAM).await;
    let retry = json!({"metadata": {"annotations": {"bpfleet.dev/retry": "budget-room"}}});
    api.patch(
        SECOND,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&retry),
    )
    .await
    .expect("retry");
    wait_for_named(&api, SECOND, "second healthy", 90, |tp| {
        phase(tp) == Some(Phase::Healthy)
    })
    .await;
    delete_and_wait(&api, SECOND).await;
    assert!(agent.pins().is_empty(), "pins left: {:?}", agent.pins());
    operator.kill();
}

/// getppid(2) in a loop on a thread of its own until dropped.
struct Syscalls {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syscalls {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..1000 {
                    // SAFETY: no arguments, no side effects.
                    unsafe { libc::getppid() };
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Syscalls {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `BudgetEnforced` condition of a list of conditions.
fn budget_enforced(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    conditions.iter().find(|c| c.type_ == "BudgetEnforced")
}

/// A policy's `maxCpuOverheadPercent` through the operator and a real
/// agent: the burner (a program that samples and burns cycles per event
/// kept) driven by a busy getppid(2) thread goes over its budget; the
/// agent cuts its sampling and the TracerProgram and the policy say
/// `BudgetEnforced=True` (`SamplingReduced`, naming the node); with the
/// load gone, the sampling is back and the condition `False`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_program_over_its_cpu_budget_gets_its_sampling_cut_and_says_so() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    let client = cp.client().await.expect("client");
    let objects = Objects::write();
    let agent = Agent::start_with("node-cpu", &["--budget-period-seconds", "1"]);
    agent.register(&client).await;
    let policies = create_policy(
        &client,
        json!({"targets": {"programNames": [PROGRAM]}, "budgets": {"maxCpuOverheadPercent": 2}}),
    )
    .await;
    let api: Api<TracerProgram> = Api::all(client.clone());
    let operator = Operator::start(client.clone());

    let burner = objects.spec("burner", "1.0.0", json!({"immediate": {}}));
    apply(&api, &burner).await;
    wait_for(&api, "burner healthy", 60, |tp| {
        phase(tp) == Some(Phase::Healthy)
    })
    .await;

    let load = Syscalls::start();
    let tp = wait_for(&api, "BudgetEnforced=True", 60, |tp| {
        tp.status
            .as_ref()
            .and_then(|s| budget_enforced(&s.conditions))
            .is_some_and(|c| c.status == "True" && c.reason == "SamplingReduced")
    })
    .await;
    let c = budget_enforced(&tp.status.as_ref().expect("status").conditions)
        .expect("condition")
        .clone();
    assert!(
        c.message.contains("sampling reduced on node-cpu: ") && c.message.contains("(budget 2 %)"),
        "{}",
        c.message
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let pc = loop {
        let p = policies.get("syscount-health").await.expect("get policy");
        let c = p
            .status
            .as_ref()
            .and_then(|s| budget_enforced(&s.conditions))
            .cloned();
        if let Some(c) = c.filter(|c| c.status == "True") {
            break c;
        }
        assert!(Instant::now() < deadline, "policy status {:?}", p.status);
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(pc.reason, "SamplingReduced");
    assert!(
        pc.message
            .starts_with(&format!("{PROGRAM}: sampling reduced on node-cpu")),
        "{}",
        pc.message
    );
    let ready = policy_settled(&policies, "policy in force", |c| c.reason == "Applied").await;
    assert!(
        !ready.message.contains("maxCpuOverheadPercent"),
        "{}",
        ready.message
    );
    assert!(
        agent.audited_actions().iter().any(|a| a == "cpu_budget"),
        "the agent audits its cuts"
    );

    // The load gone: sampling doubled back to the request, condition False.
    drop(load);
    wait_for(&api, "BudgetEnforced=False", 60, |tp| {
        tp.status
            .as_ref()
            .and_then(|s| budget_enforced(&s.conditions))
            .is_some_and(|c| c.status == "False" && c.reason == "Within")
    })
    .await;
    assert_eq!(
        config_slots(&agent)[0],
        0,
        "slot 8 back to the policy's (unset)"
    );

    delete_and_wait(&api, PROGRAM).await;
    assert!(agent.pins().is_empty(), "pins left: {:?}", agent.pins());
    operator.kill();
}

/// The e2e policy's status once `ok` holds for it (90 s at most).
async fn policy_status_until(
    policies: &Api<bpfleet_api::TracerPolicy>,
    what: &str,
    secs: u64,
    ok: impl Fn(&bpfleet_api::TracerPolicyStatus) -> bool,
) -> bpfleet_api::TracerPolicyStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let p = policies.get("syscount-health").await.expect("get policy");
        if let Some(s) = p.status.as_ref().filter(|s| ok(s)) {
            return s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: policy status {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A policy's alert through the operator and a real agent: `ProgramErrors`
/// over 1m on a revision that reports an error on every getppid(2). The
/// agent fires it; the policy's status names the alert and the node, with
/// the `AlertsFiring` condition. Once the program makes no more errors
/// (its thread filter set to a thread that does not exist), the window
/// slides past the last one and the alert resolves everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_policy_alert_fires_on_a_node_and_resolves() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    let client = cp.client().await.expect("client");
    let objects = Objects::write();
    let agent = Agent::start("node-alerting");
    agent.register(&client).await;
    let policies = create_policy(
        &client,
        json!({"targets": {"programNames": [PROGRAM]},
               "alerts": [{"name": "Faults", "signal": "ProgramErrors", "threshold": 0,
                           "window": "1m", "severity": "Critical"}]}),
    )
    .await;
    let api: Api<TracerProgram> = Api::all(client.clone());
    let operator = Operator::start(client.clone());
    let load = Load::start();

    let faulty = objects.spec("faulty", "1.0.0", json!({"immediate": {}}));
    apply(&api, &faulty).await;
    wait_for(&api, "faulty revision active", 60, |tp| {
        phase(tp) == Some(Phase::Healthy)
    })
    .await;
    let s = policy_status_until(&policies, "alert firing", 60, |s| {
        !s.firing_alerts.is_empty()
    })
    .await;
    let f = &s.firing_alerts[0];
    assert_eq!(
        (f.alert.as_str(), f.severity.as_str(), f.nodes),
        ("Faults", "Critical", 1)
    );
    assert_eq!(f.node_names, ["node-alerting"]);
    assert_eq!(f.programs, [PROGRAM]);
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "AlertsFiring")
        .expect("AlertsFiring");
    assert_eq!(c.status, "True");
    assert_eq!(c.message, "Faults (Critical) on 1 node(s)");
    let ready = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert!(!ready.message.contains("spec.alerts"), "{}", ready.message);
    assert!(
        agent.audited_actions().iter().any(|a| a == "policy_alert"),
        "the agent audits the transition"
    );

    // No more errors: slot 0 of bpfleet_config is the thread the program
    // counts (0: every thread); no thread has this id.
    shared_map(&agent, "bpfleet_config")
        .update(
            &0u32.to_ne_bytes(),
            &u64::from(u32::MAX - 1).to_ne_bytes(),
            libbpf_rs::MapFlags::ANY,
        )
        .expect("set the thread filter");
    drop(load);
    let s = policy_status_until(&policies, "alert resolved", 120, |s| {
        s.firing_alerts.is_empty()
            && s.conditions
                .iter()
                .any(|c| c.type_ == "AlertsFiring" && c.status == "False")
    })
    .await;
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "AlertsFiring")
        .expect("AlertsFiring");
    assert_eq!(c.message, "none of 1 alert(s) fires");

    delete_and_wait(&api, PROGRAM).await;
    assert!(agent.pins().is_empty(), "pins left: {:?}", agent.pins());
    operator.kill();
}
