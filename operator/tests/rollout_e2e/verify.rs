//! Verify everywhere before switching anywhere, on real agents and the real
//! apiserver: node-c's agent is restarted with `--deny-helper
//! bpf_get_current_pid_tgid`, so its kernel refuses every new syscount
//! object as a kernel lacking the helper would (the one it runs stays).
//! A canary of v2 never switches a node and fails naming node-c, its kernel
//! release and the verifier's line; retried with `onFailure: Exclude`, v2
//! rolls out on node-a and node-b while node-c keeps counting on v1.

use std::time::Duration;

use bpfleet_api::TracerProgram;
use bpfleet_api::program::Phase;
use bpfleet_e2e::ControlPlane;
use bpfleet_operator::agents::Pool;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::cluster::*;
use super::nodes::*;

const OLD_KERNEL: &str = "5.4.0-e2e-no-pid-tgid";

/// Sets the Node's `status.nodeInfo.kernelVersion`, as a kubelet would.
async fn report_kernel(client: &kube::Client, node: &str, release: &str) {
    let info = json!({"status": {"nodeInfo": {
        "kernelVersion": release, "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
        "kubeProxyVersion": "", "kubeletVersion": "", "machineID": "", "operatingSystem": "linux",
        "osImage": "", "systemUUID": ""
    }}});
    Api::<Node>::all(client.clone())
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&info))
        .await
        .expect("node status");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kernel_that_refuses_the_candidate_blocks_or_is_excluded() {
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
    for n in &NODES[..2] {
        report_kernel(&client, n, "6.8.0-e2e").await;
    }
    report_kernel(&client, NODES[2], OLD_KERNEL).await;
    let api: Api<TracerProgram> = Api::all(client.clone());
    let operator = Operator::start(client.clone());

    // v1 everywhere, then node-c's kernel "loses" the helper.
    let v1 = objects.spec("v1", "1.0.0", json!({"immediate": {}}));
    let r1 = spec_revision(&v1);
    apply(&api, &v1).await;
    wait_for(&api, "v1 healthy", 60, |tp| healthy_on(tp, &r1)).await;
    let c = &mut agents[2];
    c.kill9();
    c.extra = vec!["--deny-helper".into(), "bpf_get_current_pid_tgid".into()];
    c.spawn();
    counting(&agents, 0, &[1]).await;

    // v2 by canary, verification on by default, onFailure Block.
    let canary =
        json!({"canary": {"steps": [{"setNodePercent": 34}, {"pause": {"duration": "2s"}}]}});
    let v2 = objects.spec("v2", "2.0.0", canary.clone());
    let r2 = spec_revision(&v2);
    apply(&api, &v2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let tp = loop {
        // Never a switch while verifying, nor after the refusal.
        for (node, (active, _)) in NODES.iter().zip(placement(&pool, &agents).await) {
            assert_eq!(active, r1, "{node} switched during verification");
        }
        let tp = api.get(PROGRAM).await.expect("get");
        if phase(&tp) == Some(Phase::Aborted) {
            break tp;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not aborted: {}",
            dump(&tp)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let st = tp.status.clone().expect("status");
    let message = st.message.clone().unwrap_or_default();
    assert!(
        message.contains("VerificationFailed") || message.contains("1 of 3 nodes cannot load it"),
        "{message}"
    );
    assert!(
        message.contains(&format!("kernel {OLD_KERNEL}: node-c")),
        "{message}"
    );
    let v = st.verification.clone().expect("verification in status");
    assert_eq!(
        (
            v.revision.as_str(),
            v.result.as_str(),
            v.nodes,
            v.verified,
            v.failed
        ),
        (r2.as_str(), "Failed", 3, 2, 1),
        "{}",
        dump(&tp)
    );
    let refused = &v.failed_nodes[0];
    assert_eq!(
        (
            refused.node.as_str(),
            refused.kernel_release.as_str(),
            refused.reason.as_str()
        ),
        ("node-c", OLD_KERNEL, "VerifierRejected")
    );
    assert!(
        refused
            .first_error
            .starts_with("unknown func bpf_get_current_pid_tgid#14"),
        "{}",
        refused.first_error
    );
    // This machine's kernel has BTF, and each real agent says so, the
    // refusing node too.
    let kernels: Vec<(&str, i32, i32, Option<&str>)> = v
        .kernels
        .iter()
        .map(|k| {
            (
                k.kernel_release.as_str(),
                k.verified,
                k.failed,
                k.btf.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        kernels,
        [
            ("6.8.0-e2e", 2, 0, Some("Present")),
            (OLD_KERNEL, 0, 1, Some("Present"))
        ]
    );
    // Rolled back: v2 unloaded where it loaded, v1 counting everywhere.
    settle(&pool, &agents, "v2 unloaded", |p| {
        p.iter()
            .all(|(a, l)| *a == r1 && l == std::slice::from_ref(&r1))
    })
    .await;
    counting(&agents, 0, &[1]).await;

    // The same revision again with onFailure: Exclude (a retry, since the
    // strategy is not part of the revision).
    let mut excluding = canary.clone();
    excluding["verifyFirst"] = json!({"onFailure": "Exclude", "maxConcurrent": 1});
    apply(&api, &objects.spec("v2", "2.0.0", excluding)).await;
    let retry = json!({"metadata": {"annotations": {"bpfleet.dev/retry": "e2e-verify"}}});
    api.patch(PROGRAM, &PatchParams::default(), &Patch::Merge(&retry))
        .await
        .expect("retry");
    let tp = wait_for(&api, "v2 stable without node-c", 90, |tp| stable(tp) == r2).await;
    let st = tp.status.clone().expect("status");
    let v = st.verification.clone().expect("verification");
    assert_eq!(
        (v.result.as_str(), v.failed),
        ("Excluded", 1),
        "{}",
        dump(&tp)
    );
    assert_eq!(st.nodes.failed, 1, "{}", dump(&tp));
    settle(&pool, &agents, "node-c keeps v1", |p| {
        p[0].0 == r2 && p[1].0 == r2 && p[2].0 == r1
    })
    .await;
    counting(&agents[..2], 1, &[0]).await;
    counting(&agents[2..], 0, &[1]).await;
    // Degraded, and it says why.
    let tp = wait_for(&api, "degraded", 30, |tp| {
        phase(tp) == Some(Phase::Degraded)
    })
    .await;
    let failing = &tp.status.as_ref().expect("status").failing_nodes;
    assert_eq!(failing.len(), 1, "{}", dump(&tp));
    assert_eq!(failing[0].node, "node-c");
    assert_eq!(failing[0].reason, "VerifierRejected");
    operator.assert_running("at the end");
    operator.kill();
}
