//! Revisions from `bytecode.image` in a real registry (Debian's
//! docker-registry, TLS from a private CA, basic auth), through the real
//! reconciler, three real agents and a real apiserver:
//! - the pull secret missing: every node waits as `SourceUnavailable` (the
//!   Secret named, nothing failed, the stable revision still running, one
//!   event, no hot loop);
//! - the Secret with a wrong password: the nodes wait on the registry's 401;
//! - the right password: the next retry pulls and the revision rolls out;
//! - the registry stopped mid-canary: the canary waits on the nodes that
//!   must pull, and finishes once the registry is back;
//!
//! and nothing of the Secret reaches a status, an event, an agent's log or
//! its audit log.

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

use bpfleet_testsupport::registry::{Registry, RegistryOpts};

use super::cluster::*;
use super::hostile::reqwest_like;
use super::nodes::*;

const SECRET: &str = "syscount-registry";
const USER: &str = "ci";
const PASSWORD: &str = "pw-SECRET-not-for-logs";
const WRONG: &str = "pw-WRONG-not-for-logs";

/// `obj` pushed as `bpf/syscount:<tag>`; its digest reference.
async fn push(reg: &Registry, tag: &str, obj: &[u8]) -> String {
    use bpfleet_oci::format::{self, Format, Labels};
    let client = reg.client();
    let labels = Labels {
        programs: Some([("count_getppid".to_string(), "tracepoint".to_string())].into()),
        maps: None,
    };
    let built = format::build(Format::Bpfman, obj, "syscount.bpf.o", &labels).expect("image");
    let repo = format!("{}/bpf/syscount", reg.host());
    let creds = bpfleet_oci::Credentials {
        username: USER.into(),
        password: PASSWORD.into(),
    };
    let digest = client
        .push(&repo, tag, &built, Some(&creds))
        .await
        .expect("push");
    format!("{repo}:{tag}@{digest}")
}

/// The dockerconfigjson Secret for `host` with `password`.
fn secret(host: &str, password: &str) -> Secret {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"));
    let config = json!({"auths": {host: {"auth": auth}}}).to_string();
    Secret {
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
    }
}

/// Every node listed as waiting on the source with a message holding
/// `needle`.
fn all_waiting_on(tp: &TracerProgram, needle: &str) -> bool {
    tp.status.as_ref().is_some_and(|s| {
        s.phase == Some(Phase::Progressing)
            && s.failing_nodes.len() == 3
            && s.failing_nodes
                .iter()
                .all(|f| f.reason == "SourceUnavailable" && f.message.contains(needle))
    })
}

fn waiting_on_secret(tp: &TracerProgram, host: &str) -> bool {
    tp.status.as_ref().is_some_and(|s| {
        s.failing_nodes.len() == 3
            && s.failing_nodes.iter().all(|f| {
                f.reason == "SourceUnavailable"
                    && f.message
                        .contains(&format!("bytecode.image.pullSecret default/{SECRET}"))
                    && f.message.contains("no such Secret")
                    && f.message.contains(host)
            })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn images_wait_for_their_secret_and_registry_then_roll_out() {
    let mut reg = Registry::start(RegistryOpts {
        tls: true,
        users: vec![(USER.into(), PASSWORD.into())],
    });
    let host = reg.host();
    let ca = reg.ca_file().display().to_string();
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("CRDs install");
    let client = cp.client().await.expect("client");
    let objects = Objects::write();
    let agents: Vec<Agent> = NODES
        .iter()
        .map(|n| Agent::start_with(n, &["--registry-ca", &ca]))
        .collect();
    for a in &agents {
        a.register(&client).await;
    }
    let pool = Pool::new(None, Duration::from_secs(30));
    let api: Api<TracerProgram> = Api::all(client.clone());
    let operator = Operator::start_with(&client, "operator", &[]);

    let v1 = objects.spec("v1", "1.0.0", json!({"immediate": {}}));
    let r1 = spec_revision(&v1);
    apply(&api, &v1).await;
    wait_for(&api, "v1 healthy", 60, |tp| healthy_on(tp, &r1)).await;

    // v2 from an image whose pull secret does not exist yet.
    let mut v2 = objects.spec("v2", "2.0.0", json!({"immediate": {}}));
    v2["spec"]["bytecode"] = json!({"image": {
        "reference": push(&reg, "v2", bpfleet_bpf::SYSCOUNT_V2).await,
        "pullSecret": SECRET,
    }});
    let r2 = spec_revision(&v2);
    apply(&api, &v2).await;
    let tp = wait_for(&api, "every node waiting for the pull secret", 60, |tp| {
        waiting_on_secret(tp, &host)
    })
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
        reqwest_like(operator.metrics_port)
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
    assert!(waiting_on_secret(&tp, &host), "{}", dump(&tp));
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

    // The Secret appears with a wrong password: a retry (at most a minute
    // away) reads it, the agents pull and the registry answers 401.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .create(&PostParams::default(), &secret(&host, WRONG))
        .await
        .expect("secret");
    wait_for(&api, "the nodes waiting on the registry's 401", 75, |tp| {
        all_waiting_on(tp, "401")
    })
    .await;
    let placed = placement(&pool, &agents).await;
    assert!(placed.iter().all(|(a, _)| *a == r1), "{placed:?}");

    // The right password: the next retry pulls, v2 rolls out.
    secrets
        .replace(SECRET, &PostParams::default(), &secret(&host, PASSWORD))
        .await
        .expect("secret");
    wait_for(&api, "v2 healthy from its image", 90, |tp| {
        healthy_on(tp, &r2)
    })
    .await;

    // The registry stops; a canary of v3 (another image) waits on the
    // nodes that must pull it, and finishes once the registry is back.
    let v3_image = push(&reg, "v3", bpfleet_bpf::SYSCOUNT_V1).await;
    reg.stop();
    let mut v3 = objects.spec(
        "v1",
        "3.0.0",
        json!({"canary": {"steps": [{"setNodePercent": 34}, {"setNodePercent": 100}]}}),
    );
    // Room for the backoff: a node that failed five times retries a
    // minute later, and a loaded CI machine is slow to notice the wait.
    v3["spec"]["progressDeadlineSeconds"] = json!(600);
    v3["spec"]["bytecode"] = json!({"image": {
        "reference": v3_image,
        "pullSecret": SECRET,
    }});
    let r3 = spec_revision(&v3);
    apply(&api, &v3).await;
    let tp = wait_for(
        &api,
        "the canary waiting on the stopped registry",
        60,
        |tp| {
            tp.status.as_ref().is_some_and(|s| {
                s.candidate_revision.as_deref() == Some(r3.as_str())
                    && !s.failing_nodes.is_empty()
                    && s.failing_nodes.iter().all(|f| {
                        f.reason == "SourceUnavailable" && f.message.contains("source unavailable")
                    })
            })
        },
    )
    .await;
    assert_eq!(phase(&tp), Some(Phase::Progressing), "{}", dump(&tp));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let tp = api.get(PROGRAM).await.expect("get");
    assert_eq!(
        phase(&tp),
        Some(Phase::Progressing),
        "still waiting: {}",
        dump(&tp)
    );
    reg.start_again();
    let tp = wait_for(&api, "v3 healthy once the registry is back", 120, |tp| {
        healthy_on(tp, &r3)
    })
    .await;
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let text = dump(&tp);
    assert!(!text.contains(PASSWORD), "{text}");
    // Nothing of the Secret is in the agents' logs and audit logs (which
    // do name the image) or in any event.
    for a in &agents {
        let log = a.log();
        assert!(log.contains("bpf/syscount"), "{}: {log}", a.node);
        for secret in [PASSWORD, WRONG] {
            assert!(
                !log.contains(secret),
                "{}: the log holds a password",
                a.node
            );
        }
    }
    let all = events.list(&Default::default()).await.expect("events");
    let shown = serde_json::to_string(&all.items).unwrap();
    assert!(
        !shown.contains(PASSWORD) && !shown.contains(WRONG) && !shown.contains("ci:"),
        "an event holds the secret"
    );
    assert!(started.elapsed() < Duration::from_secs(300));
    operator.assert_running("at the end");
    operator.kill();
}
