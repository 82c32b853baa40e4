//! The agent and operator binaries run with the chart's arguments: the
//! agent starts with what the chart renders, answers its probes, exports
//! only metrics the tests know and speaks mTLS with the chart's material;
//! the operator, as its ServiceAccount with the chart's RBAC on a real
//! apiserver, drives that agent. Both need root and bpffs (the agent).

use bpfleet_e2e::{ControlPlane, workspace_root};
use serde_json::Value;

use crate::code::agent_metrics;
use crate::processes::{build_binaries, http_get, start_agent, start_operator, tls_client};
use crate::support::{AGENT, NS, OPERATOR, all_on, container, docs, flag, named, render, strs};

/// The agent binary, started exactly with the arguments the chart renders
/// (everything on), paths moved to a temporary directory and addresses to
/// loopback, and the Helm-generated certificates: it starts, reports ready
/// on the probe path, exports only metrics the tests know, accepts the
/// operator's client certificate and refuses any other. Needs root and
/// bpffs, like the agent's own tests.
#[test]
fn the_agent_runs_with_the_charts_arguments() {
    use base64::Engine;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test runs the real agent: run it as root (as CI does)"
    );
    let exe = build_binaries().remove(AGENT).expect("agent built");
    let helm_tls = docs(&render(&[]));
    let full = docs(&render(&["-f", &all_on()]));
    let dir = tempfile::tempdir().unwrap();
    let (agent_proc, grpc, metrics, pin_root, health) =
        start_agent(&full, &helm_tls, &exe, dir.path(), None);
    assert_eq!(health["ready"], true, "{health}");
    assert_eq!(health["agent"]["pin_root"], pin_root.as_str());
    let agent = container(&full, AGENT, "DaemonSet");
    // What the operator holds: its certificate and the agents' CA.
    let secret = |name: &str, key: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(
                named(&helm_tls, "Secret", name)["data"][key]
                    .as_str()
                    .unwrap(),
            )
            .unwrap()
    };
    let put = |rel: &str, bytes: &[u8]| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p.to_string_lossy().into_owned()
    };
    let agent_ca = put(
        "client/agent-ca.crt",
        &secret("bpfleet-agent-tls", "ca.crt"),
    );
    let op_crt = put("client/op.crt", &secret("bpfleet-operator-tls", "tls.crt"));
    let op_key = put("client/op.key", &secret("bpfleet-operator-tls", "tls.key"));
    let agent_crt = put("client/agent.crt", &secret("bpfleet-agent-tls", "tls.crt"));
    let agent_key = put("client/agent.key", &secret("bpfleet-agent-tls", "tls.key"));

    // The liveness path, and only metrics the other tests know about.
    let live = agent["livenessProbe"]["httpGet"]["path"].as_str().unwrap();
    let (status, text) = http_get(metrics, live).expect("metrics answer");
    assert_eq!(status, 200);
    let known = agent_metrics();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut w = line.split_whitespace().skip(2);
        let (name, kind) = (w.next().unwrap(), w.next().unwrap());
        let sample = match kind {
            "counter" => format!("{name}_total"),
            "histogram" => format!("{name}_count"),
            _ => name.to_string(),
        };
        assert!(
            known.contains(&sample),
            "the agent exports {sample}, unknown to the chart tests"
        );
    }

    // mTLS with the chart's material: the operator's certificate is
    // accepted, the agent's own (another CA) and none are refused, and the
    // agent's certificate carries the name the operator checks.
    let name = flag(
        &strs(&container(&full, OPERATOR, "Deployment")["args"]),
        "--agent-tls-name",
    );
    tls_client(grpc, &agent_ca, Some((&op_crt, &op_key)), &name)
        .unwrap_or_else(|e| panic!("operator certificate refused: {e}"));
    let e = tls_client(grpc, &agent_ca, Some((&agent_crt, &agent_key)), &name)
        .expect_err("an agent certificate drives another agent");
    assert!(e.contains("unknown ca"), "{e}");
    tls_client(grpc, &agent_ca, None, &name).expect_err("no client certificate accepted");
    let e = tls_client(
        grpc,
        &agent_ca,
        Some((&op_crt, &op_key)),
        "bpfleet-operator",
    )
    .expect_err("agent certificate valid for another name");
    assert!(e.contains("verify") || e.contains("mismatch"), "{e}");

    drop(agent_proc);
    let _ = std::fs::remove_dir(&pin_root);
}

/// The operator binary, started with the arguments the chart renders and
/// the files it mounts, acting as its ServiceAccount (kubeconfig
/// impersonation) with the chart's RBAC applied for real, drives the real
/// agent (started the same way) over the chart's mTLS: it finds the agent
/// through the node annotation, writes status and finalizer, holds its
/// Lease, keeps a revision snapshot, and is refused nothing by the
/// apiserver. Needs root and bpffs (the agent).
#[tokio::test]
async fn operator_drives_the_agent_with_the_charts_arguments_and_rbac() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "runs the real agent: run as root"
    );
    let bins = build_binaries();
    let d = docs(&render(&[]));
    let dir = tempfile::tempdir().unwrap();
    let (_agent, grpc, _metrics, pin_root, _) =
        start_agent(&d, &d, &bins[AGENT], &dir.path().join("agent"), None);

    let cp = ControlPlane::start().await.expect("control plane starts");
    let (operator, log) = start_operator(&cp, &d, &bins[OPERATOR], dir.path(), grpc).await;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // A program whose object is not on this "node": the agent refuses the
    // load, so the failure the status reports comes from the agent itself
    // (an mTLS failure would make it unreachable instead).
    cp.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        &workspace_root()
            .join("examples/syscall-counter-immediate.yaml")
            .to_string_lossy(),
    ])
    .unwrap();
    let mut last = Value::Null;
    for _ in 0..120 {
        let out = cp
            .kubectl_ok(&["get", "tracerprogram", "syscall-counter", "-o", "json"])
            .unwrap();
        last = serde_json::from_str(&out).unwrap();
        if last["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("chart-node"))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // The agent's own words, carried back over mTLS into status.
    let message = last["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(
            "chart-node: AgentError: reading /var/lib/bpfleet/objects/syscall_counter.bpf.o"
        ),
        "no refusal from the agent in status: {last}\n{}",
        log_text()
    );
    assert!(!message.contains("Unreachable"), "{message}");
    assert!(
        last["status"]["observedGeneration"].is_i64(),
        "status written: {last}"
    );
    assert!(
        !strs(&last["metadata"]["finalizers"]).is_empty(),
        "finalizer added: {last}"
    );
    let holder = cp
        .kubectl_ok(&[
            "-n",
            NS,
            "get",
            "lease",
            "bpfleet-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .expect("the operator holds its Lease");
    assert_eq!(holder, "bpfleet-operator-0");
    let snapshots = cp
        .kubectl_ok(&["-n", NS, "get", "controllerrevisions", "-o", "name"])
        .unwrap();
    assert!(!snapshots.trim().is_empty(), "revision snapshot kept");
    let text = log_text();
    assert!(
        !text.contains("forbidden") && !text.contains("Forbidden"),
        "the apiserver refused the operator something its code does:\n{text}"
    );
    drop(operator);
    let _ = std::fs::remove_dir_all(&pin_root);
}
