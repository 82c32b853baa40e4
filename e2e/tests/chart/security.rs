//! The agent's own security flags are rendered by default: no
//! `--allow-unsigned`, the operator's identity pinned with the certificate
//! the chart issues carrying it, path sources confined to `--object-dir`.
//!
//! Every container holds only what the code needs: no privilege, no
//! escalation, read-only root, all capabilities dropped, requests, limits
//! and probes; the operator runs as non-root with nothing from the node;
//! the agent adds exactly the capabilities its code keeps after setup
//! (plus CAP_SYS_ADMIN for BPF stats when asked, which it drops), and
//! mounts exactly the host paths it uses, read-only where it only reads.
//!
//! One check reads the agent's source: that it still documents CAP_SYS_ADMIN
//! as setup-only (bpffs mount, BPF stats before the capability drop), an
//! ordering no item of the agent's API shows. It searches the comments of
//! every file under `node-agent/src`, wrapped or not, so moving the
//! comment between files does not break it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::code::{agent_keeps_sys_admin, agent_kept_capabilities};
use crate::support::{
    AGENT, OPERATOR, all_on, container, docs, flag, flags, named, pod_specs, render, rust_sources,
    strs,
};

/// The comment text of the agent's source files, comment markers removed
/// and whitespace collapsed (so a rewrapped sentence still matches).
fn agent_comments() -> String {
    let mut words = Vec::new();
    for (_, src) in rust_sources("node-agent/src") {
        for line in src.lines() {
            let t = line.trim_start();
            if let Some(c) = ["//!", "///", "//"].iter().find_map(|m| t.strip_prefix(m)) {
                words.extend(c.split_whitespace().map(str::to_string));
            }
        }
    }
    words.join(" ")
}

#[test]
fn containers_hold_only_what_the_code_needs() {
    let kept = agent_kept_capabilities();
    for (label, extra, sys_admin, sys_resource) in [
        ("defaults", vec![], false, true),
        (
            "everything on",
            vec!["-f".to_string(), all_on()],
            true,
            true,
        ),
        (
            "no CAP_SYS_RESOURCE",
            vec!["--set".to_string(), "agent.grantSysResource=false".into()],
            false,
            false,
        ),
    ] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let d = docs(&render(&extra));
        let specs = pod_specs(&d);
        assert_eq!(specs.len(), 2, "{label}: one Deployment, one DaemonSet");
        for (name, spec) in &specs {
            // File modes as plain integers: `0440` is octal to YAML 1.1
            // (Kubernetes) but a string or decimal to YAML 1.2 tools.
            for v in spec["volumes"].as_array().unwrap() {
                for src in ["secret", "configMap"] {
                    let mode = &v[src]["defaultMode"];
                    assert!(
                        v[src].is_null() || mode.is_u64(),
                        "{label} {name}: volume {} has defaultMode {mode}",
                        v["name"]
                    );
                }
            }
            assert!(
                spec["hostNetwork"].is_null() && spec["hostIPC"].is_null(),
                "{label} {name}: no host network or IPC"
            );
            let mut containers: Vec<&Value> =
                spec["containers"].as_array().unwrap().iter().collect();
            if let Some(init) = spec["initContainers"].as_array() {
                containers.extend(init);
            }
            for c in containers {
                let sc = &c["securityContext"];
                let what = format!("{label} {name}/{}", c["name"]);
                assert_ne!(sc["privileged"], json!(true), "{what}: privileged");
                assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{what}");
                assert_eq!(sc["readOnlyRootFilesystem"], json!(true), "{what}");
                assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{what}");
                assert!(c["resources"]["requests"].is_object(), "{what}: requests");
                assert!(c["resources"]["limits"]["memory"].is_string(), "{what}");
                assert!(
                    c["livenessProbe"].is_object() && c["readinessProbe"].is_object(),
                    "{what}: probes"
                );
            }
        }

        // Operator: non-root, no capability, no host access.
        let op = named(&d, "Deployment", OPERATOR);
        let pod = &op["spec"]["template"]["spec"];
        assert_eq!(op["spec"]["replicas"], 2, "{label}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_ne!(pod["securityContext"]["runAsUser"], 0);
        assert!(pod["hostPID"].is_null(), "{label}: operator has no hostPID");
        let c = &pod["containers"][0];
        assert!(c["securityContext"]["capabilities"]["add"].is_null());
        assert!(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|v| v["hostPath"].is_null()),
            "{label}: operator mounts nothing from the node"
        );
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");

        // Agent: exactly the capabilities the code keeps (+ CAP_SYS_ADMIN for
        // BPF stats when asked, which the agent drops after setup).
        let ds = named(&d, "DaemonSet", AGENT);
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["hostPID"], true, "{label}: uprobes need hostPID");
        let c = &pod["containers"][0];
        let added: BTreeSet<String> = strs(&c["securityContext"]["capabilities"]["add"])
            .into_iter()
            .collect();
        let mut want = kept.clone();
        if sys_admin {
            want.insert("SYS_ADMIN".into());
        }
        if !sys_resource {
            assert!(
                want.remove("SYS_RESOURCE"),
                "the agent keeps CAP_SYS_RESOURCE"
            );
        }
        assert_eq!(
            added, want,
            "{label}: agent capabilities vs KEEP_AFTER_SETUP"
        );
        assert!(
            !agent_keeps_sys_admin(),
            "the agent keeps CAP_SYS_ADMIN after setup; re-check agent.bpfStats"
        );
        assert!(
            agent_comments().contains("(CAP_SYS_ADMIN) happen before the drop"),
            "the agent no longer documents that CAP_SYS_ADMIN is setup-only; re-check agent.bpfStats"
        );
        let rolling = &ds["spec"]["updateStrategy"];
        assert_eq!(rolling["type"], "RollingUpdate");
        assert_eq!(rolling["rollingUpdate"]["maxUnavailable"], 1);
        assert!(
            pod["tolerations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["operator"] == "Exists" && t["key"].is_null()),
            "{label}: agent tolerates every taint"
        );
        // Host paths: exactly these, read-only where the agent only reads.
        let mounts: BTreeMap<String, &Value> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["name"].as_str().unwrap().to_string(), m))
            .collect();
        let host: BTreeMap<String, String> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["hostPath"].is_object())
            .map(|v| {
                (
                    v["hostPath"]["path"].as_str().unwrap().to_string(),
                    v["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            host.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "/sys/fs/bpf",
                "/sys/kernel/btf",
                "/sys/kernel/tracing",
                "/var/lib/bpfleet",
                "/var/log/pods"
            ],
            "{label}: agent host paths"
        );
        assert_eq!(
            pod["automountServiceAccountToken"], false,
            "{label}: the agent calls no API, so holds no token"
        );
        for ro in ["/sys/kernel/btf", "/sys/kernel/tracing", "/var/log/pods"] {
            assert_eq!(mounts[&host[ro]]["readOnly"], true, "{label}: {ro}");
        }
        assert_ne!(
            mounts[&host["/sys/fs/bpf"]]["mountPropagation"], "Bidirectional",
            "Bidirectional propagation needs a privileged container"
        );
    }
}

/// The PEM certificate's DER bytes.
fn pem_der(pem: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let body: String = String::from_utf8_lossy(pem)
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// The agent's security flags as the chart renders them by default: no
/// `--allow-unsigned`, no privileged container, the operator's identity
/// pinned (`--client-identity`, the very identity the chart's operator
/// certificate carries, in helm and cert-manager modes, checked by the
/// agent's own code) and path sources confined (`--object-dir`). A user's
/// `tls.operatorName` reaches both the flag and the certificates.
#[test]
fn the_default_render_pins_the_operator_and_confines_object_paths() {
    use base64::Engine;
    let d = docs(&render(&[]));
    let args = strs(&container(&d, AGENT, "DaemonSet")["args"]);
    assert!(
        !args.iter().any(|a| a.starts_with("--allow-unsigned")),
        "{args:?}"
    );
    for (name, spec) in pod_specs(&d) {
        for c in spec["containers"].as_array().unwrap() {
            assert_ne!(c["securityContext"]["privileged"], json!(true), "{name}");
        }
    }
    let identities: Vec<String> = flags(&args)
        .into_iter()
        .filter(|(f, _)| f == "--client-identity")
        .filter_map(|(_, v)| v)
        .collect();
    assert_eq!(identities, ["bpfleet-operator"], "{args:?}");
    let dirs: Vec<String> = flags(&args)
        .into_iter()
        .filter(|(f, _)| f == "--object-dir")
        .filter_map(|(_, v)| v)
        .collect();
    assert_eq!(dirs, ["/var/lib/bpfleet/objects"], "{args:?}");
    // The object directory lies on the state volume the agent mounts.
    let mounts = container(&d, AGENT, "DaemonSet")["volumeMounts"].clone();
    assert!(
        mounts
            .as_array()
            .unwrap()
            .iter()
            .any(|m| dirs[0].starts_with(&format!("{}/", m["mountPath"].as_str().unwrap()))),
        "{mounts}"
    );

    // helm mode: the operator's certificate passes the agent's identity
    // check with the rendered flag; an agent pinned to another name
    // refuses it.
    let op_secret = named(&d, "Secret", "bpfleet-operator-tls");
    let crt = base64::engine::general_purpose::STANDARD
        .decode(op_secret["data"]["tls.crt"].as_str().unwrap())
        .unwrap();
    let der = pem_der(&crt);
    let ids = bpfleet_agent::peer::admit(&der, &identities)
        .unwrap_or_else(|e| panic!("the chart's operator certificate is refused: {e}"));
    assert_eq!(ids.dns, ["bpfleet-operator"]);
    assert!(bpfleet_agent::peer::admit(&der, &["bpfleet-agent".to_string()]).is_err());
    // The agent's own certificate (same chart, other CA and name) would
    // not pass the identity check either.
    let agent_crt = base64::engine::general_purpose::STANDARD
        .decode(
            named(&d, "Secret", "bpfleet-agent-tls")["data"]["tls.crt"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert!(bpfleet_agent::peer::admit(&pem_der(&agent_crt), &identities).is_err());

    // cert-manager mode: the operator's Certificate names the pinned
    // identity as CN and DNS SAN.
    let cm = docs(&render(&["--set", "tls.mode=certManager"]));
    let cert = named(&cm, "Certificate", "bpfleet-operator-tls");
    assert_eq!(cert["spec"]["commonName"], "bpfleet-operator");
    assert_eq!(strs(&cert["spec"]["dnsNames"]), ["bpfleet-operator"]);
    let cm_args = strs(&container(&cm, AGENT, "DaemonSet")["args"]);
    assert_eq!(flag(&cm_args, "--client-identity"), "bpfleet-operator");

    // A user's name reaches flag and certificates; no object dirs, no flag.
    let own = docs(&render(&[
        "--set",
        "tls.operatorName=ops.example",
        "--set",
        "agent.objectDirs=null",
    ]));
    let own_args = strs(&container(&own, AGENT, "DaemonSet")["args"]);
    assert_eq!(flag(&own_args, "--client-identity"), "ops.example");
    assert!(!own_args.iter().any(|a| a.starts_with("--object-dir")));
    let crt = base64::engine::general_purpose::STANDARD
        .decode(
            named(&own, "Secret", "bpfleet-operator-tls")["data"]["tls.crt"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    bpfleet_agent::peer::admit(&pem_der(&crt), &["ops.example".to_string()]).unwrap();
    let cm = docs(&render(&[
        "--set",
        "tls.mode=certManager",
        "--set",
        "tls.operatorName=ops.example",
    ]));
    let cert = named(&cm, "Certificate", "bpfleet-operator-tls");
    assert_eq!(cert["spec"]["commonName"], "ops.example");
}
