//! A revision from `bytecode.image` whose pull secret is missing, through
//! the real reconciler, three real agents and a real apiserver: every node
//! waits as `SourceUnavailable` (the Secret named, nothing failed, the
//! stable revision still running, one event, no hot loop), and once the
//! Secret exists the next retry sends the Load to the agents.

use std::time::{Duration, Instant};

use base64::Engine;
use bpfleet_api::TracerProgram;
use bpfleet_api::program::Phase;
use bpfleet_e2e::ControlPlane;
use bpfleet_operator::agents::Pool;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, PostParams};
use serde_json::json;

use super::cluster::*;
use super::hostile::reqwest_like;
use super::nodes::*;

const SECRET: &str = "syscount-registry";
const PASSWORD: &str = "pw-SECRET-not-for-logs";

fn waiting_on_secret(tp: &TracerProgram) -> bool {
    tp.status.as_ref().is_some_and(|s| {
        s.failing_nodes.len() == 3
            && s.failing_nodes.iter().all(|f| {
                f.reason == "SourceUnavailable"
                    && f.message
                        .contains(&format!("bytecode.image.pullSecret default/{SECRET}"))
                    && f.message.contains("no such Secret")
                    && f.message.contains("registry.invalid:5000")
            })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_pull_secret_is_waited_for_then_the_load_reaches_the_agents() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    let client = cp.client().await.expect("client");
    let objects = Objects::write();
    let agents: Vec<Agent> = NODES.iter().map(|n| Agent::start(n)).collect();
    for a in &agents {
        a.register(&client).await;
    }
    let pool = Pool::new(None, Duration::from_secs(30));
    let api: Api<TracerProgram> = Api::all(client.clone());
    let port = bpfleet_testsupport::free_port();
    let task = {
        use clap::Parser;
        let args = bpfleet_operator::run::Args::parse_from([
            "bpfleet-operator",
            "--metrics-listen",
            &format!("127.0.0.1:{port}"),
            "--namespace",
            "default",
        ]);
        let c = client.clone();
        tokio::spawn(async move { bpfleet_operator::run::run_with(c, args).await })
    };

    let v1 = objects.spec("v1", "1.0.0", json!({"immediate": {}}));
    let r1 = spec_revision(&v1);
    apply(&api, &v1).await;
    wait_for(&api, "v1 healthy", 60, |tp| healthy_on(tp, &r1)).await;

    // v2 from an image whose pull secret does not exist yet.
    let mut v2 = objects.spec("v2", "2.0.0", json!({"immediate": {}}));
    v2["spec"]["bytecode"] = json!({"image": {
        "reference": format!("registry.invalid:5000/bpf/syscount:v2@sha256:{}", "ab".repeat(32)),
        "pullSecret": SECRET,
    }});
    let r2 = spec_revision(&v2);
    apply(&api, &v2).await;
    let tp = wait_for(
        &api,
        "every node waiting for the pull secret",
        60,
        waiting_on_secret,
    )
    .await;
    let started = Instant::now();
    let st = tp.status.clone().unwrap();
    assert_eq!(st.candidate_revision.as_deref(), Some(r2.as_str()));
    assert_eq!(st.phase, Some(Phase::Progressing), "{}", dump(&tp));
    let message = st.message.clone().unwrap_or_default();
    assert!(
        message.contains("3 node(s) cannot fetch its source"),
        "{message}"
    );
    // Nothing was failed or unloaded: the stable revision runs everywhere.
    let placed = placement(&pool, &agents).await;
    assert!(placed.iter().all(|(a, _)| *a == r1), "{placed:?}");

    // No hot loop: while the nodes wait, a handful of reconciles.
    let reconciles = || async {
        reqwest_like(port)
            .await
            .lines()
            .filter(|l| l.starts_with("bpfleet_operator_reconciles_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = reconciles().await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = reconciles().await - before;
    assert!(during <= 16.0, "{during} reconciles in 8 s of waiting");
    let tp = api.get(PROGRAM).await.expect("get");
    assert!(waiting_on_secret(&tp), "{}", dump(&tp));
    assert_eq!(phase(&tp), Some(Phase::Progressing));
    // One event for the wait, naming the Secret.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let ours: Vec<Event> = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SourceUnavailable"))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let note = ours[0].note.clone().unwrap_or_default();
    assert!(
        note.contains("3 node(s)") && note.contains(SECRET),
        "{note}"
    );

    // The Secret appears: a retry (at most a minute away) reads it and the
    // Load goes to the agents; what they answer is theirs to say, but it is
    // no longer about the pull secret.
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci:{PASSWORD}"));
    let config = json!({"auths": {"registry.invalid:5000": {"auth": auth}}}).to_string();
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(SECRET.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(
            [(
                ".dockerconfigjson".to_string(),
                ByteString(config.into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    // The agent's answer, not the operator's: today a refusal of images
    // (the rollout fails and returns to v1), once agents pull an
    // unresolvable registry (the nodes keep waiting, on the registry now).
    let tp = wait_for(&api, "the Load answered by the agents", 75, |tp| {
        tp.status.as_ref().is_some_and(|s| {
            let message = s.message.clone().unwrap_or_default();
            let refused = s.phase == Some(Phase::Aborted)
                && message.contains("failed to load")
                && !message.contains("pullSecret");
            let unreachable_registry = !s.failing_nodes.is_empty()
                && s.failing_nodes
                    .iter()
                    .all(|f| !f.message.contains("pullSecret"));
            refused || unreachable_registry
        })
    })
    .await;
    let text = dump(&tp);
    assert!(!text.contains(PASSWORD), "{text}");
    // Whatever the agents answered, nothing of the Secret is in their
    // audit logs or in any event.
    for a in &agents {
        let audit = std::fs::read_to_string(a.dir.path().join("audit.jsonl")).expect("audit log");
        assert!(
            !audit.contains(PASSWORD),
            "{}: audit holds the password",
            a.node
        );
    }
    let all = events.list(&Default::default()).await.expect("events");
    let shown = serde_json::to_string(&all.items).unwrap();
    assert!(
        !shown.contains(PASSWORD) && !shown.contains("ci:"),
        "an event holds the secret"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(!task.is_finished(), "operator stopped: {task:?}");
    task.abort();
}
