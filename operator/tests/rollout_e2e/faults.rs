//! Control-plane faults during a canary of syscount, with the operator run
//! as the chart runs it (`--leader-elect`, default resync and timeouts):
//! - the apiserver killed for 60 s at a pause, and etcd killed and started
//!   again meanwhile: the nodes' programs keep counting, nothing on the
//!   nodes moves, the operator stays up, and once the apiserver is back it
//!   writes status again within a bound and the canary finishes;
//! - the leader replica killed at a pause: the second replica takes the
//!   Lease and carries on at the same step, on the same canary node.
//!
//! Clock jumps are tested on the pure machine
//! (`tests/scenarios/clock.rs`): a test cannot move the clock of a shared
//! machine.

use std::time::{Duration, Instant};

use bpfleet_api::TracerProgram;
use bpfleet_api::program::Phase;
use bpfleet_e2e::ControlPlane;
use bpfleet_operator::agents::Pool;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::{Value, json};

use super::cluster::*;
use super::nodes::*;

/// How long the apiserver stays down.
const OUTAGE: Duration = Duration::from_secs(60);
/// After the apiserver is back, the operator writes status within this.
const RESUME_BOUND: Duration = Duration::from_secs(10);
/// The Lease both replicas campaign for.
const LEASE: &str = "bpfleet-operator";

/// One operator replica as the chart runs it: leader election on, the
/// other flags at their defaults.
fn replica(client: &kube::Client, identity: &str) -> Operator {
    Operator::start_with(
        client,
        &format!("operator replica {identity}"),
        &[
            "--leader-elect",
            "--lease-name",
            LEASE,
            "--identity",
            identity,
        ],
    )
}

/// A control plane, three agents counting getppid(2), v1 healthy on every
/// node, and the operator replicas named `replicas`.
struct Stage {
    // Drop order: replicas first (Drop), then agents, then the control plane.
    replicas: Vec<(String, Operator)>,
    pool: Pool,
    api: Api<TracerProgram>,
    client: kube::Client,
    objects: Objects,
    _load: Load,
    agents: Vec<Agent>,
    cp: ControlPlane,
    r1: String,
}

impl Stage {
    async fn start(prefix: &str, replicas: &[&str]) -> Stage {
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
        let agents: Vec<Agent> = ["a", "b", "c"]
            .iter()
            .map(|n| Agent::start(&format!("{prefix}-{n}")))
            .collect();
        for a in &agents {
            a.register(&client).await;
        }
        let api: Api<TracerProgram> = Api::all(client.clone());
        let mut stage = Stage {
            replicas: Vec::new(),
            pool: Pool::new(None, Duration::from_secs(30)),
            api,
            client,
            objects,
            _load: Load::start(),
            agents,
            cp,
            r1: String::new(),
        };
        for id in replicas {
            stage
                .replicas
                .push((id.to_string(), replica(&stage.client, id)));
        }
        let v1 = stage.objects.spec("v1", "1.0.0", json!({"immediate": {}}));
        stage.r1 = spec_revision(&v1);
        apply(&stage.api, &v1).await;
        let r1 = stage.r1.clone();
        wait_for(&stage.api, "v1 healthy", 60, |tp| healthy_on(tp, &r1)).await;
        counting(&stage.agents, 0, &[1, 2]).await;
        stage
    }

    /// v2 by canary (one node of three, `pause`, then all); waits until it
    /// is paused at step 1 on one node; the status at that moment.
    async fn canary_to_pause(&self, pause: Value) -> (String, TracerProgram) {
        let v2 = self.objects.spec(
            "v2",
            "2.0.0",
            json!({"canary": {"steps": [{"setNodePercent": 33}, {"pause": pause}, {"setNodePercent": 100}]}}),
        );
        let r2 = spec_revision(&v2);
        apply(&self.api, &v2).await;
        let tp = wait_for(&self.api, "v2 paused at step 1 on one node", 60, |tp| {
            paused_at_step_1(tp, &r2)
        })
        .await;
        (r2, tp)
    }

    /// Panics when a replica's task ended (its panic names the error).
    fn replicas_alive(&self, when: &str) {
        for (id, replica) in &self.replicas {
            replica.assert_running(&format!("(replica {id}) {when}"));
        }
    }

    /// The nodes on `rev`, by name.
    async fn on(&self, rev: &str) -> Vec<String> {
        placement(&self.pool, &self.agents)
            .await
            .iter()
            .zip(&self.agents)
            .filter(|((active, _), _)| active == rev)
            .map(|(_, a)| a.node.clone())
            .collect()
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        for (_, replica) in self.replicas.drain(..) {
            replica.kill();
        }
    }
}

fn paused_at_step_1(tp: &TracerProgram, r2: &str) -> bool {
    phase(tp) == Some(Phase::Paused)
        && tp.status.as_ref().is_some_and(|s| {
            s.current_step_index == Some(1)
                && s.nodes.updated == 1
                && s.candidate_revision.as_deref() == Some(r2)
        })
}

/// The sum of each node's counters.
fn totals(agents: &[Agent]) -> Vec<u64> {
    agents.iter().map(|a| counts(a).iter().sum()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_rides_out_the_apiserver_down_and_etcd_restarted() {
    let started = Instant::now();
    let mut st = Stage::start("cpf", &["replica-a"]).await;
    let (r2, paused) = st.canary_to_pause(json!({"duration": "20s"})).await;
    let canary_nodes = st.on(&r2).await;
    assert_eq!(canary_nodes.len(), 1, "{}", dump(&paused));
    let written_before = paused.metadata.resource_version.clone();

    // The apiserver goes; etcd is killed and started again half-way.
    st.cp.stop_apiserver();
    let down_at = Instant::now();
    let mut last = totals(&st.agents);
    let mut etcd_restarted = false;
    while down_at.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if !etcd_restarted && down_at.elapsed() >= OUTAGE / 2 {
            st.cp.restart_etcd().await.expect("etcd comes back");
            etcd_restarted = true;
        }
        let now = totals(&st.agents);
        for ((a, b), ag) in now.iter().zip(&last).zip(&st.agents) {
            assert!(
                a > b,
                "{}: counters stopped while the apiserver was down ({b} → {a})",
                ag.node
            );
        }
        last = now;
        assert_eq!(
            st.on(&r2).await,
            canary_nodes,
            "a node moved while the apiserver was down"
        );
        assert_eq!(st.on(&st.r1).await.len(), 2);
        st.replicas_alive("while the apiserver was down");
    }
    assert!(etcd_restarted);
    // Each node still counts into its own revision's slot.
    for a in &st.agents {
        let (slot, still) = if canary_nodes.contains(&a.node) {
            (1, 0)
        } else {
            (0, 1)
        };
        let before = counts(a);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let after = counts(a);
        assert!(
            after[slot] > before[slot] && after[still] == before[still],
            "{}: {before:?} → {after:?}",
            a.node
        );
    }

    st.cp
        .start_apiserver()
        .await
        .expect("the apiserver comes back");
    let back_at = Instant::now();
    // Nothing but the operator writes the TracerProgram: the first change
    // of its resourceVersion is the operator's first status write.
    let resumed = loop {
        let tp = st
            .api
            .get(PROGRAM)
            .await
            .expect("get after the apiserver's return");
        if tp.metadata.resource_version != written_before {
            break tp;
        }
        assert!(
            back_at.elapsed() < Duration::from_secs(90),
            "no status written in 90 s after the apiserver came back:\n{}",
            dump(&tp)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let resume_delay = back_at.elapsed();
    eprintln!(
        "figure: apiserver down {:.1} s; first status write {:.1} s after it was ready again",
        back_at.duration_since(down_at).as_secs_f64(),
        resume_delay.as_secs_f64()
    );
    // Neither aborted nor skipped: the pause was over (20 s of a 60 s
    // outage), so the rollout is at or past the pause on the candidate.
    let s = resumed.status.clone().expect("status");
    assert_eq!(
        s.candidate_revision
            .as_deref()
            .or(s.stable_revision.as_deref()),
        Some(r2.as_str()),
        "{}",
        dump(&resumed)
    );
    assert_ne!(s.phase, Some(Phase::Aborted), "{}", dump(&resumed));
    assert!(s.current_step_index >= Some(1), "{}", dump(&resumed));
    let tp = wait_for(&st.api, "v2 healthy after the outage", 60, |tp| {
        assert_ne!(
            phase(tp),
            Some(Phase::Aborted),
            "aborted after the outage:\n{}",
            dump(tp)
        );
        healthy_on(tp, &r2)
    })
    .await;
    eprintln!(
        "figure: Healthy on v2 {:.1} s after the apiserver was ready again",
        back_at.elapsed().as_secs_f64()
    );
    assert!(
        resume_delay <= RESUME_BOUND,
        "the operator wrote status {resume_delay:?} after the apiserver came back (bound {RESUME_BOUND:?})"
    );
    let history = tp
        .status
        .as_ref()
        .map(|s| s.history.clone())
        .unwrap_or_default();
    assert!(history.iter().any(|h| h.revision == r2), "{}", dump(&tp));
    settle(&st.pool, &st.agents, "v2 everywhere", |p| {
        p.iter().all(|(a, _)| *a == r2)
    })
    .await;
    counting(&st.agents, 1, &[0, 2]).await;
    st.replicas_alive("after the outage");
    eprintln!("figure: test ran {:.0} s", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_second_replica_takes_the_lease_and_continues_the_same_step() {
    let mut st = Stage::start("lead", &["replica-a"]).await;
    let leases: Api<Lease> = Api::namespaced(st.client.clone(), "default");
    let holder = |l: &Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        holder(&leases.get(LEASE).await.expect("lease")),
        "replica-a"
    );
    // The second replica stands by.
    st.replicas
        .push(("replica-b".into(), replica(&st.client, "replica-b")));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (r2, paused) = st.canary_to_pause(json!({"duration": "45s"})).await;
    let canary_nodes = st.on(&r2).await;
    assert_eq!(canary_nodes.len(), 1, "{}", dump(&paused));
    let step_started = paused
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .and_then(|r| r.step_started_at.clone());
    assert!(step_started.is_some(), "{}", dump(&paused));

    // The leader dies at the pause, mid-step, without giving the Lease up.
    let (id, leader) = st.replicas.remove(0);
    assert_eq!(id, "replica-a");
    leader.kill();
    let killed_at = Instant::now();
    let lease = loop {
        let l = leases.get(LEASE).await.expect("lease");
        if holder(&l) == "replica-b" {
            break l;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "replica-b did not take the lease: {:?}",
            l.spec
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let takeover = killed_at.elapsed();
    let rv_at_takeover = st
        .api
        .get(PROGRAM)
        .await
        .expect("get")
        .metadata
        .resource_version;
    // replica-b's first status write.
    let first = loop {
        let tp = st.api.get(PROGRAM).await.expect("get");
        if tp.metadata.resource_version != rv_at_takeover {
            break tp;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "replica-b wrote no status:\n{}",
            dump(&tp)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let first_write = killed_at.elapsed();
    eprintln!(
        "figure: lease taken by replica-b {:.1} s after the leader was killed (transitions {:?}); its first status write at {:.1} s",
        takeover.as_secs_f64(),
        lease.spec.as_ref().and_then(|s| s.lease_transitions),
        first_write.as_secs_f64()
    );
    // Same step, same canary node, the same pause clock: neither back to
    // step 0 nor past the pause.
    assert!(
        paused_at_step_1(&first, &r2),
        "replica-b moved the rollout:\n{}",
        dump(&first)
    );
    assert_eq!(
        first
            .status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .and_then(|r| r.step_started_at.clone()),
        step_started,
        "the pause's clock restarted:\n{}",
        dump(&first)
    );
    assert_eq!(st.on(&r2).await, canary_nodes);
    st.replicas_alive("after the takeover");

    wait_for(&st.api, "v2 healthy under replica-b", 90, |tp| {
        if let Some(s) = tp.status.as_ref() {
            assert!(
                s.current_step_index >= Some(1),
                "went back a step:\n{}",
                dump(tp)
            );
        }
        healthy_on(tp, &r2)
    })
    .await;
    settle(&st.pool, &st.agents, "v2 everywhere", |p| {
        p.iter().all(|(a, _)| *a == r2)
    })
    .await;
    counting(&st.agents, 1, &[0, 2]).await;
}
