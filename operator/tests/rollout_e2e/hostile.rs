//! Agents that answer garbage, never answer, or are not there, and a
//! program whose selector matches no node: clear status, no panic, no hot
//! loop (checked on the operator's own metrics).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bpfleet_api::TracerProgram;
use bpfleet_api::program::Phase;
use bpfleet_e2e::ControlPlane;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

use super::cluster::*;

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
    let operator = Operator::start_with(&client, "operator", &["--observe-timeout-seconds", "2"]);
    let port = operator.metrics_port;

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
    operator.assert_running("at the end");
    operator.kill();
    drop(held);
}

/// GET /metrics from the in-process operator.
pub(crate) async fn reqwest_like(port: u16) -> String {
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
