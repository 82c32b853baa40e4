//! `deploy/bpfleet-ops` against a real kube-apiserver with the harness's
//! helm and kubectl: help, prerequisite checks with their way out, dry run,
//! deploy, upgrade keeping the generated certificates, status, logs without
//! pods, and uninstall that keeps CRDs while programs exist.

use std::path::Path;
use std::process::Command;

use bpfleet_e2e::{ControlPlane, binary_dir, workspace_root};

use crate::support::{all_on, text};

/// `deploy/bpfleet-ops` against the control plane, with the harness's helm
/// and kubectl.
fn ops(cp: &ControlPlane, home: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(workspace_root().join("deploy/bpfleet-ops"))
        .args(args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("HELM", binary_dir().join("helm"))
        .env("KUBECTL", binary_dir().join("kubectl"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("running bpfleet-ops");
    (out.status.success(), text(&out))
}

#[tokio::test]
async fn ops_script_deploys_upgrades_and_uninstalls_on_a_real_apiserver() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    let home = tempfile::tempdir().unwrap();
    let home = home.path();
    let ns = "ops-test";
    let base = ["--namespace", ns, "--release", "bpfleet"];
    let run = |args: &[&str]| {
        let mut all = base.to_vec();
        all.extend_from_slice(args);
        ops(&cp, home, &all)
    };

    let (ok, help) = run(&["--help"]);
    assert!(ok, "{help}");
    for word in [
        "check",
        "deploy",
        "upgrade",
        "uninstall",
        "status",
        "logs operator|agent",
        "port-forward operator|agent",
        "--namespace",
        "--release",
        "--values",
        "--dry-run",
        "--skip-monitoring",
    ] {
        assert!(help.contains(word), "--help does not mention {word}");
    }

    // Prerequisites fail with the reason and the way out.
    let out = Command::new("bash")
        .arg(workspace_root().join("deploy/bpfleet-ops"))
        .args(["check"])
        .env("KUBECONFIG", home.join("missing-kubeconfig"))
        .env("HELM", binary_dir().join("helm"))
        .env("KUBECTL", binary_dir().join("kubectl"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cannot reach the cluster"),
        "{}",
        text(&out)
    );
    let all_on = all_on();
    let (ok, out) = run(&["check", "-f", &all_on]);
    assert!(!ok, "monitoring and cert-manager kinds are not served here");
    for why in [
        "ServiceMonitor: install the Prometheus Operator CRDs, or pass --skip-monitoring",
        "PrometheusRule",
        "Certificate: install cert-manager",
    ] {
        assert!(out.contains(why), "check does not say {why}:\n{out}");
    }
    let (ok, out) = run(&["check", "-f", &all_on, "--skip-monitoring"]);
    assert!(
        !ok && !out.contains("ServiceMonitor") && out.contains("cert-manager"),
        "{out}"
    );

    // A dry run changes nothing.
    let (ok, out) = run(&["deploy", "--dry-run"]);
    assert!(ok, "{out}");
    assert!(out.contains("--dry-run=server"), "{out}");
    assert!(
        cp.kubectl_ok(&["get", "namespace", ns]).is_err(),
        "dry run created the namespace"
    );

    let (ok, out) = run(&["deploy", "--no-wait"]);
    assert!(ok, "{out}");
    let labels = cp
        .kubectl_ok(&["get", "namespace", ns, "-o", "jsonpath={.metadata.labels}"])
        .unwrap();
    assert!(
        labels.contains("\"pod-security.kubernetes.io/enforce\":\"privileged\""),
        "{labels}"
    );
    cp.kubectl_ok(&[
        "-n",
        ns,
        "get",
        "deployment/bpfleet-operator",
        "daemonset/bpfleet-agent",
    ])
    .expect("workloads created");
    cp.kubectl_ok(&["get", "crd", "tracerprograms.bpfleet.dev"])
        .expect("CRDs installed");
    let cert = || {
        cp.kubectl_ok(&[
            "-n",
            ns,
            "get",
            "secret",
            "bpfleet-agent-tls",
            "-o",
            "jsonpath={.data.tls\\.crt}",
        ])
        .unwrap()
    };
    let first = cert();
    assert!(first.len() > 100);

    // Upgrade keeps the certificates (looked up) and applies new values.
    let (ok, out) = run(&["upgrade", "--no-wait", "--set", "operator.logLevel=debug"]);
    assert!(ok, "{out}");
    assert_eq!(cert(), first, "upgrade regenerated the mTLS material");
    let env = cp
        .kubectl_ok(&[
            "-n",
            ns,
            "get",
            "deployment/bpfleet-operator",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env}",
        ])
        .unwrap();
    assert!(
        env.contains("\"name\":\"RUST_LOG\",\"value\":\"debug\""),
        "{env}"
    );
    let (ok, out) = ops(
        &cp,
        home,
        &["-n", ns, "-r", "other", "upgrade", "--no-wait"],
    );
    assert!(
        !ok && out.contains("release other is not installed"),
        "{out}"
    );

    let (ok, out) = run(&["status"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("REVISION: 2") && out.contains("no TracerPrograms"),
        "{out}"
    );
    // No kubelet here: no pods, and logs say so instead of hanging.
    let (ok, out) = run(&["logs", "operator"]);
    assert!(
        !ok && out.contains("no operator pod of release bpfleet"),
        "{out}"
    );
    let (ok, out) = run(&["logs", "agent", "--node", "worker-1"]);
    assert!(
        !ok && out.contains("no agent of release bpfleet on node worker-1"),
        "{out}"
    );

    // CRDs outlive the release while programs exist.
    cp.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        &workspace_root()
            .join("examples/syscall-counter-immediate.yaml")
            .to_string_lossy(),
    ])
    .unwrap();
    let (ok, out) = run(&["uninstall", "--delete-crds"]);
    assert!(!ok && out.contains("TracerProgram(s) exist"), "{out}");
    let (ok, out) = run(&["uninstall"]);
    assert!(ok, "{out}");
    assert!(
        cp.kubectl_ok(&["-n", ns, "get", "deployment/bpfleet-operator"])
            .is_err()
    );
    cp.kubectl_ok(&["get", "tracerprogram", "syscall-counter"])
        .expect("programs stay");
    let (ok, _) = run(&["status"]);
    assert!(!ok, "release gone");
}
