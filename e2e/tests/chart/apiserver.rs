//! The rendered chart applied (server-side dry run) to a real
//! kube-apiserver with the bpfleet CRDs and stand-ins for the monitoring
//! and cert-manager CRDs (`stand-in-crds.yaml`); the GitOps programs built
//! by kubectl's kustomize; Pod Security admission for real (the operator
//! passes `restricted`, the agent needs `privileged`); RBAC applied and
//! asked with `kubectl auth can-i`.

use bpfleet_e2e::{ControlPlane, workspace_root};
use serde_json::{Value, json};

use crate::support::{AGENT, NS, OPERATOR, all_on, docs, named, render, text, write};

/// The pod a workload would create, as a Pod manifest in `ns`.
fn pod_of(docs: &[Value], k: &str, name: &str, ns: &str) -> Value {
    let w = named(docs, k, name);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("{name}-probe"), "namespace": ns,
                      "labels": w["spec"]["template"]["metadata"]["labels"]},
        "spec": w["spec"]["template"]["spec"],
    })
}

fn can_i(cp: &ControlPlane, sa: &str, args: &[&str]) -> bool {
    let who = format!("--as=system:serviceaccount:{NS}:{sa}");
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    all.push(&who);
    let out = cp.kubectl().unwrap().args(&all).output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        answer == "yes" || answer == "no",
        "can-i {args:?}: {}",
        text(&out)
    );
    answer == "yes"
}

#[tokio::test]
async fn rendered_chart_applies_to_a_real_apiserver() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    cp.install_crds().expect("bpfleet CRDs install");
    let dir = tempfile::tempdir().unwrap();
    let stand_ins = workspace_root()
        .join("e2e/tests/chart/stand-in-crds.yaml")
        .to_string_lossy()
        .into_owned();
    cp.kubectl_ok(&["apply", "--server-side", "-f", &stand_ins])
        .expect("stand-in CRDs install");
    cp.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "-f",
        &stand_ins,
    ])
    .expect("stand-in CRDs established");
    for ns in [NS, "bpfleet-bytecode"] {
        cp.kubectl_ok(&["create", "namespace", ns]).unwrap();
    }

    for (label, extra) in [
        ("defaults", vec![]),
        ("everything on", vec!["-f".to_string(), all_on()]),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let yaml = render(&extra);
        let n = docs(&yaml).len();
        let file = write(dir.path(), "rendered.yaml", &yaml);
        let out = cp
            .kubectl_ok(&["apply", "--server-side", "--dry-run=server", "-f", &file])
            .unwrap_or_else(|e| panic!("{label}: the apiserver refuses the chart: {e}"));
        let applied = out
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        assert_eq!(applied, n, "{label}: every object accepted:\n{out}");
    }

    // The GitOps programs directory, built by kubectl's kustomize as Argo CD
    // and Flux build it, is accepted by the real CRDs.
    let programs = workspace_root().join("deploy/gitops/programs");
    let built = cp
        .kubectl_ok(&["kustomize", &programs.to_string_lossy()])
        .expect("kustomize build");
    assert!(built.contains("kind: TracerProgram"), "{built}");
    let f = write(dir.path(), "programs.yaml", &built);
    cp.kubectl_ok(&["apply", "--server-side", "--dry-run=server", "-f", &f])
        .expect("GitOps programs accepted by the CRDs");

    // Pod Security admission, for real: the operator's pod passes
    // `restricted`; the agent's pod is refused by `baseline` (hostPID,
    // hostPath, capabilities) and accepted by `privileged`, which is why the
    // release namespace needs that label. --allow-privileged=false on this
    // apiserver refuses any privileged container outright.
    let d = docs(&render(&[]));
    for (ns, level) in [
        ("psa-restricted", "restricted"),
        ("psa-baseline", "baseline"),
        ("psa-privileged", "privileged"),
    ] {
        cp.kubectl_ok(&["create", "namespace", ns]).unwrap();
        cp.kubectl_ok(&[
            "label",
            "namespace",
            ns,
            &format!("pod-security.kubernetes.io/enforce={level}"),
        ])
        .unwrap();
        for sa in [OPERATOR, AGENT] {
            cp.kubectl_ok(&["-n", ns, "create", "serviceaccount", sa])
                .unwrap();
        }
    }
    let try_pod = |pod: Value| -> Result<String, String> {
        let f = write(dir.path(), "pod.json", &pod.to_string());
        cp.kubectl_ok(&["create", "--dry-run=server", "-f", &f])
            .map_err(|e| e.to_string())
    };
    try_pod(pod_of(&d, "Deployment", OPERATOR, "psa-restricted"))
        .expect("operator pod meets the restricted Pod Security Standard");
    let refused = try_pod(pod_of(&d, "DaemonSet", AGENT, "psa-baseline"))
        .expect_err("baseline refuses the agent");
    for why in ["hostPID", "hostPath", "capabilities"] {
        assert!(
            refused.contains(why),
            "baseline refusal names {why}: {refused}"
        );
    }
    assert!(
        !refused.contains("privileged"),
        "agent is not privileged: {refused}"
    );
    try_pod(pod_of(&d, "DaemonSet", AGENT, "psa-privileged"))
        .expect("agent pod accepted in a privileged namespace");
    let full = docs(&render(&["-f", &all_on()]));
    try_pod(pod_of(&full, "DaemonSet", AGENT, "psa-privileged"))
        .expect("agent pod with every option accepted");

    // RBAC, for real: apply the roles and ask the apiserver what the
    // service accounts may do.
    let rbac: Vec<Value> = d
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .cloned()
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": rbac});
    let f = write(dir.path(), "rbac.json", &list.to_string());
    cp.kubectl_ok(&["apply", "--server-side", "-f", &f])
        .expect("RBAC applies");
    let op_yes: &[&[&str]] = &[
        &["watch", "tracerprograms.bpfleet.dev"],
        &[
            "patch",
            "tracerprograms.bpfleet.dev",
            "--subresource=status",
        ],
        &[
            "update",
            "tracerprograms.bpfleet.dev",
            "--subresource=finalizers",
        ],
        &[
            "patch",
            "tracerpolicies.bpfleet.dev",
            "--subresource=status",
        ],
        &["list", "nodes"],
        &["watch", "pods", "-n", NS],
        &["create", "controllerrevisions.apps", "-n", NS],
        &["deletecollection", "controllerrevisions.apps", "-n", NS],
        &["get", "configmaps", "-n", "team-a"],
        &["get", "secrets", "-n", NS],
        &["create", "events.events.k8s.io", "-n", "default"],
        &["patch", "events", "-n", "default"],
        &["create", "leases.coordination.k8s.io", "-n", NS],
        &[
            "update",
            "leases.coordination.k8s.io/bpfleet-operator",
            "-n",
            NS,
        ],
    ];
    let op_no: &[&[&str]] = &[
        &["list", "secrets", "-n", NS],
        &["watch", "secrets", "-n", NS],
        &["get", "secrets", "-n", "default"],
        &["get", "secrets", "-n", "kube-system"],
        &["create", "secrets", "-n", NS],
        &["list", "configmaps", "-A"],
        &["watch", "pods", "-n", "default"],
        &["create", "controllerrevisions.apps", "-n", "default"],
        &["patch", "tracerpolicies.bpfleet.dev"],
        &[
            "update",
            "leases.coordination.k8s.io/kube-scheduler",
            "-n",
            NS,
        ],
        &["create", "leases.coordination.k8s.io", "-n", "kube-system"],
        &["delete", "pods", "-n", NS],
        &["create", "tracerprograms.bpfleet.dev"],
        &["delete", "tracerprograms.bpfleet.dev"],
        &["patch", "nodes"],
        &["create", "pods", "--subresource=exec", "-n", NS],
    ];
    for a in op_yes {
        assert!(can_i(&cp, OPERATOR, a), "operator may not {a:?}");
    }
    for a in op_no {
        assert!(!can_i(&cp, OPERATOR, a), "operator may {a:?}");
    }
    for a in [
        &["watch", "pods", "-A"][..],
        &["list", "namespaces"],
        &["get", "secrets", "-n", NS],
        &["get", "configmaps", "-n", NS],
        &["patch", "pods", "-n", NS],
        &["list", "nodes"],
        &["list", "tracerprograms.bpfleet.dev"],
    ] {
        assert!(!can_i(&cp, AGENT, a), "agent may {a:?}");
    }
}
