//! RBAC grants exactly what the code uses: no wildcard or escalation verb,
//! Secrets only as `get` in the operator's own namespace (image pull
//! secrets), the operator's ClusterRole and Roles equal to the
//! calls its code makes (a tripwire on those calls in `operator/src`), the
//! ConfigMap grant narrowed to bytecode namespaces when listed, and no role
//! at all for the agent, which has no Kubernetes client (its dependencies,
//! as `cargo metadata` lists them).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::{
    AGENT, NS, OPERATOR, all_on, docs, kind, named, render, rust_sources, strs, workspace_metadata,
};

/// The operator's own source (`operator/src`, the `kubectl bpfleet` plugin
/// left out: it runs with the user's credentials, not the operator's
/// ServiceAccount), concatenated.
fn operator_source() -> String {
    rust_sources("operator/src")
        .into_iter()
        .filter(|(p, _)| {
            let p = p.to_string_lossy();
            !p.contains("plugin") && !p.contains("kubectl")
        })
        .map(|(_, text)| text)
        .collect::<Vec<_>>()
        .join("\n")
}

/// (apiGroup, resource, verb, resourceName or "") of every rule of a role.
fn grants(role: &Value) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for r in role["rules"].as_array().unwrap() {
        let names = strs(&r["resourceNames"]);
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for g in strs(&r["apiGroups"]) {
            for res in strs(&r["resources"]) {
                for v in strs(&r["verbs"]) {
                    for n in &names {
                        out.insert((g.clone(), res.clone(), v.clone(), n.clone()));
                    }
                }
            }
        }
    }
    out
}

fn expand(spec: &[(&str, &[&str], &[&str], &str)]) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for (g, res, verbs, name) in spec {
        for r in *res {
            for v in *verbs {
                out.insert((
                    g.to_string(),
                    r.to_string(),
                    v.to_string(),
                    name.to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_what_the_code_uses() {
    let d = docs(&render(&["-f", &all_on()]));
    for role in kind(&d, "ClusterRole").into_iter().chain(kind(&d, "Role")) {
        for (g, r, v, _) in grants(role) {
            assert!(
                g != "*" && r != "*" && v != "*",
                "wildcard in {}",
                role["metadata"]["name"]
            );
            assert!(
                !["escalate", "bind", "impersonate"].contains(&v.as_str()),
                "{v} granted"
            );
            assert!(
                v != "deletecollection" || r == "controllerrevisions",
                "deletecollection on {r}"
            );
            // Pull secrets are read by name (get) in the operator's
            // namespace: never listed or watched, never cluster-wide.
            assert!(
                r != "secrets"
                    || (v == "get"
                        && role["kind"] == "Role"
                        && role["metadata"]["name"] == OPERATOR
                        && role["metadata"]["namespace"] == NS),
                "{v} on Secrets granted by {} {}",
                role["kind"],
                role["metadata"]["name"]
            );
        }
    }
    // The operator's calls (operator/src: run, controller, leader,
    // pull_secret): watches programs, policies, nodes, agent pods; patches
    // program finalizers and status; reads bytecode ConfigMaps and, in its
    // namespace, image pull secrets (one get each); keeps revision
    // snapshots (ControllerRevisions, pruned with delete_collection) and its
    // Lease in its namespace; records events.
    let op_src = operator_source();
    for needle in [
        "Api<ControllerRevision> = Api::namespaced(",
        "delete_collection(",
        "Api::<Pod>::namespaced(",
        "Api::<Node>::all(",
        "Api<ConfigMap> = Api::namespaced(",
        "Api<Secret> = Api::namespaced(client.clone(), namespace)",
        "api.get_opt(name)",
        "api.replace(&cfg.name",
        "patch_status(",
        "finalizer(&api",
    ] {
        assert!(
            op_src.contains(needle),
            "the operator no longer calls {needle}; update the chart's RBAC and this test"
        );
    }
    let op = expand(&[
        (
            "bpfleet.dev",
            &["tracerprograms"],
            &["get", "list", "watch", "patch", "update"],
            "",
        ),
        (
            "bpfleet.dev",
            &["tracerpolicies"],
            &["get", "list", "watch"],
            "",
        ),
        (
            "bpfleet.dev",
            &["tracerprograms/status", "tracerpolicies/status"],
            &["get", "patch", "update"],
            "",
        ),
        (
            "bpfleet.dev",
            &["tracerprograms/finalizers"],
            &["update"],
            "",
        ),
        ("", &["nodes"], &["get", "list", "watch"], ""),
        ("", &["events"], &["create", "patch"], ""),
        ("events.k8s.io", &["events"], &["create", "patch"], ""),
    ]);
    assert_eq!(grants(named(&d, "ClusterRole", OPERATOR)), op);
    // With bytecode namespaces listed, ConfigMaps are readable only there.
    let bytecode = named(&d, "Role", "bpfleet-operator-bytecode");
    assert_eq!(bytecode["metadata"]["namespace"], "bpfleet-bytecode");
    assert_eq!(
        grants(bytecode),
        expand(&[("", &["configmaps"], &["get"], "")])
    );
    // Without, one cluster-wide `get` on ConfigMaps is added, nothing else.
    let defaults = docs(&render(&[]));
    let mut with_cm = op.clone();
    with_cm.extend(expand(&[("", &["configmaps"], &["get"], "")]));
    assert_eq!(grants(named(&defaults, "ClusterRole", OPERATOR)), with_cm);
    assert!(
        kind(&defaults, "Role")
            .iter()
            .all(|r| r["metadata"]["name"] != "bpfleet-operator-bytecode")
    );

    let ns_role = named(&d, "Role", OPERATOR);
    assert_eq!(ns_role["metadata"]["namespace"], NS);
    assert_eq!(
        grants(ns_role),
        expand(&[
            ("", &["pods"], &["get", "list", "watch"], ""),
            ("", &["secrets"], &["get"], ""),
            (
                "apps",
                &["controllerrevisions"],
                &[
                    "get",
                    "list",
                    "create",
                    "patch",
                    "delete",
                    "deletecollection"
                ],
                ""
            ),
        ])
    );
    let lease = named(&d, "Role", "bpfleet-operator-leader-election");
    assert_eq!(lease["metadata"]["namespace"], NS);
    assert_eq!(
        grants(lease),
        expand(&[
            ("coordination.k8s.io", &["leases"], &["create"], ""),
            (
                "coordination.k8s.io",
                &["leases"],
                &["get", "update"],
                "bpfleet-operator"
            ),
        ])
    );
    // The agent never calls the API (pod identity from kubelet's log
    // directory): no role at all, no token mounted.
    let meta = workspace_metadata();
    let agent_pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "bpfleet-agent")
        .expect("workspace package bpfleet-agent");
    for dep in agent_pkg["dependencies"].as_array().unwrap() {
        for name in [&dep["name"], &dep["rename"]] {
            let name = name.as_str().unwrap_or_default();
            assert!(
                !name.starts_with("kube") && !name.starts_with("k8s-openapi"),
                "the agent now depends on a Kubernetes client ({name}): give it RBAC in the chart"
            );
        }
    }
    for b in kind(&d, "ClusterRoleBinding")
        .into_iter()
        .chain(kind(&d, "RoleBinding"))
    {
        for s in b["subjects"].as_array().unwrap() {
            assert_ne!(s["name"], AGENT, "the agent is bound to a role");
        }
    }
    // Every binding names this release's service accounts only.
    for b in kind(&d, "ClusterRoleBinding")
        .into_iter()
        .chain(kind(&d, "RoleBinding"))
    {
        for s in b["subjects"].as_array().unwrap() {
            assert_eq!(s["kind"], "ServiceAccount");
            assert_eq!(s["namespace"], NS);
            assert!([OPERATOR, AGENT].contains(&s["name"].as_str().unwrap()));
        }
    }
}
