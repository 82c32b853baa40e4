//! An image's pull secret read from a real kube-apiserver (etcd and
//! kube-apiserver from the Go module proxy, RBAC on), as the operator's
//! ServiceAccount with only what the chart grants it: `get` on Secrets in
//! its own namespace. The right entry is picked; a missing Secret, one of
//! another type and one without an entry for the registry are refused
//! with the Secret, the key and the registry named; a Secret outside the
//! namespace cannot be read at all. No message carries the password.

// Test code: a failed setup panics, and the panic message is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use base64::Engine;
use bpfleet_e2e::ControlPlane;
use bpfleet_operator::pull_secret::credentials;
use bpfleet_operator::registry::Credentials;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

const NS: &str = "bpfleet-system";
const SA: &str = "bpfleet-operator";
const PASSWORD: &str = "hunter2-SECRET-value";
const REFERENCE: &str = "r.example:5000/bpf/syscount:v1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn meta(name: &str, ns: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(str::to_string),
        ..Default::default()
    }
}

fn secret(name: &str, ns: &str, type_: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: meta(name, Some(ns)),
        type_: Some(type_.into()),
        data: Some(BTreeMap::from([(
            key.to_string(),
            ByteString(value.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}

/// A client that acts as the operator's ServiceAccount (the admin
/// impersonating it, so RBAC decides as for the real pod).
async fn as_operator(cp: &ControlPlane) -> kube::Client {
    let kc = Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{NS}:{SA}"));
    kube::Client::try_from(config).unwrap()
}

#[tokio::test]
async fn pull_secrets_are_read_in_the_operators_namespace_only() {
    let cp = ControlPlane::start().await.expect("control plane starts");
    let admin = cp.client().await.expect("client");
    let pp = PostParams::default();
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in [NS, "team-a"] {
        namespaces
            .create(
                &pp,
                &Namespace {
                    metadata: meta(ns, None),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }
    // What charts/bpfleet/templates/operator-rbac.yaml grants for Secrets.
    Api::<ServiceAccount>::namespaced(admin.clone(), NS)
        .create(
            &pp,
            &ServiceAccount {
                metadata: meta(SA, Some(NS)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<Role>::namespaced(admin.clone(), NS)
        .create(
            &pp,
            &Role {
                metadata: meta("pull-secrets", Some(NS)),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec![String::new()]),
                    resources: Some(vec!["secrets".into()]),
                    verbs: vec!["get".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), NS)
        .create(
            &pp,
            &RoleBinding {
                metadata: meta("pull-secrets", Some(NS)),
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Role".into(),
                    name: "pull-secrets".into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: SA.into(),
                    namespace: Some(NS.into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();

    let auth = base64::engine::general_purpose::STANDARD.encode(format!("ci-bot:{PASSWORD}"));
    let config = json!({"auths": {
        "https://r.example:5000/v2/": {"auth": auth},
        "r.example": {"username": "wrong-port", "password": PASSWORD},
        "https://index.docker.io/v1/": {"username": "hub", "password": PASSWORD},
    }})
    .to_string();
    let hub_only =
        json!({"auths": {"docker.io": {"username": "hub", "password": PASSWORD}}}).to_string();
    let docker = "kubernetes.io/dockerconfigjson";
    for s in [
        secret("regcred", NS, docker, ".dockerconfigjson", &config),
        secret("hub-only", NS, docker, ".dockerconfigjson", &hub_only),
        secret("opaque", NS, "Opaque", ".dockerconfigjson", &config),
        secret("regcred", "team-a", docker, ".dockerconfigjson", &config),
    ] {
        let ns = s.metadata.namespace.clone().unwrap();
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .create(&pp, &s)
            .await
            .unwrap();
    }

    let op = as_operator(&cp).await;
    assert_eq!(
        credentials(&op, NS, "regcred", REFERENCE).await,
        Ok(Credentials {
            username: "ci-bot".into(),
            password: PASSWORD.into(),
        })
    );
    let refused = |r: Result<Credentials, String>| {
        let m = r.expect_err("refused");
        assert!(!m.contains("SECRET") && !m.contains("ci-bot"), "{m}");
        m
    };
    let m = refused(credentials(&op, NS, "absent", REFERENCE).await);
    assert!(
        m.contains("bytecode.image.pullSecret bpfleet-system/absent")
            && m.contains("no such Secret")
            && m.contains("r.example:5000"),
        "{m}"
    );
    let m = refused(credentials(&op, NS, "opaque", REFERENCE).await);
    assert!(
        m.contains("bpfleet-system/opaque") && m.contains("\"Opaque\"") && m.contains(docker),
        "{m}"
    );
    let m = refused(credentials(&op, NS, "hub-only", REFERENCE).await);
    assert!(
        m.contains("bpfleet-system/hub-only")
            && m.contains(".dockerconfigjson")
            && m.contains("none for registry r.example:5000"),
        "{m}"
    );
    // The Role is namespaced: the same Secret elsewhere is forbidden.
    let m = refused(credentials(&op, "team-a", "regcred", REFERENCE).await);
    assert!(m.contains("Forbidden") && m.contains("403"), "{m}");
    // And the admin, who may read it, gets the same answer as the operator
    // in its namespace: the check is the Secret's content, not the caller.
    assert!(
        credentials(&admin, "team-a", "regcred", REFERENCE)
            .await
            .is_ok()
    );
}
