//! Flags, ports and selectors agree with the code: every flag the chart
//! passes is one the agent's `serve` or the operator defines (asked of
//! their clap definitions), every file flag points into a mounted volume,
//! ports and probe paths match the listeners (asked of the agent's
//! endpoint), the operator's agent selector, TLS name and the
//! NetworkPolicy select the agent and operator pods as rendered. Needs
//! root and bpffs (the agent's endpoint is built in-process).

use serde_json::Value;

use crate::code::{AgentCore, agent_serve_flags, operator_flags};
use crate::support::{
    AGENT, OPERATOR, all_on, container, docs, flag, flags, kind, named, port_in, port_of, render,
    strs,
};

#[test]
fn flags_ports_and_selectors_agree_with_the_code() {
    let serve = agent_serve_flags();
    let operator = operator_flags();
    let core = AgentCore::start("wiring");
    let endpoint = core.endpoint();
    for extra in [vec![], vec!["-f".to_string(), all_on()]] {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let d = docs(&render(&extra));
        let agent = container(&d, AGENT, "DaemonSet");
        let args = strs(&agent["args"]);
        assert_eq!(args[0], "serve");
        for (f, _) in flags(&args) {
            assert!(
                serve.contains(&f),
                "agent flag {f} is not a `serve` flag of bpfleet_agent::cli"
            );
        }
        // Every file the agent is pointed at is mounted.
        let mount_paths: Vec<String> = agent["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap().to_string())
            .collect();
        for (f, v) in flags(&args) {
            let Some(v) = v else { continue };
            if v.starts_with('/') && f != "--pin-root" && f != "--http-route" {
                assert!(
                    mount_paths
                        .iter()
                        .any(|m| v == *m || v.starts_with(&format!("{m}/"))),
                    "{f}={v} is not on a mounted volume"
                );
            }
        }
        assert!(
            mount_paths
                .iter()
                .any(|m| flag(&args, "--pin-root").starts_with(&format!("{m}/"))),
            "pin root on the bpffs mount"
        );
        let grpc = port_of(agent, "grpc");
        let metrics = port_of(agent, "metrics");
        assert_eq!(port_in(&flag(&args, "--listen")), grpc);
        assert_eq!(port_in(&flag(&args, "--metrics-listen")), metrics);
        // Probes hit paths the agent's metrics listener serves (asked of
        // its endpoint: anything but 404).
        for (probe, path) in [
            ("readinessProbe", "/api/health"),
            ("livenessProbe", "/metrics"),
        ] {
            assert_eq!(agent[probe]["httpGet"]["path"], path, "{probe}");
            assert_eq!(agent[probe]["httpGet"]["port"], "metrics", "{probe}");
            let (status, _, body) = endpoint.respond(path);
            assert_ne!(status, 404, "the agent serves no {path}: {body}");
        }

        let op = container(&d, OPERATOR, "Deployment");
        let oargs = strs(&op["args"]);
        for (f, _) in flags(&oargs) {
            assert!(
                operator.contains(&f),
                "operator flag {f} is not a flag of bpfleet_operator::run::Args"
            );
        }
        for f in [
            "--leader-elect",
            "--lease-name",
            "--identity",
            "--client-key",
        ] {
            assert!(flags(&oargs).iter().any(|(g, _)| g == f), "{f} missing");
        }
        assert_eq!(flag(&oargs, "--agent-port").parse::<u64>().unwrap(), grpc);
        assert_eq!(
            port_in(&flag(&oargs, "--metrics-listen")),
            port_of(op, "metrics")
        );
        // The operator's agent selector selects the agent pods.
        let agent_labels = &named(&d, "DaemonSet", AGENT)["spec"]["template"]["metadata"]["labels"];
        for term in flag(&oargs, "--agent-selector").split(',') {
            let (k, v) = term.split_once('=').unwrap();
            assert_eq!(agent_labels[k], v, "--agent-selector term {term}");
        }
        // The agent's certificate name is what the operator checks.
        let name = flag(&oargs, "--agent-tls-name");
        for cert in kind(&d, "Certificate") {
            if cert["metadata"]["name"] == "bpfleet-agent-tls" {
                assert_eq!(strs(&cert["spec"]["dnsNames"]), std::slice::from_ref(&name));
            }
        }
        // NetworkPolicy: gRPC only from the operator's pods, by port name.
        let np = named(&d, "NetworkPolicy", AGENT);
        let op_labels =
            &named(&d, "Deployment", OPERATOR)["spec"]["template"]["metadata"]["labels"];
        let rules = np["spec"]["ingress"].as_array().unwrap();
        let grpc_rules: Vec<&Value> = rules
            .iter()
            .filter(|r| r["ports"][0]["port"] == "grpc")
            .collect();
        assert_eq!(grpc_rules.len(), 1);
        let from = grpc_rules[0]["from"].as_array().expect("gRPC has a from");
        assert_eq!(from.len(), 1);
        for (k, v) in from[0]["podSelector"]["matchLabels"].as_object().unwrap() {
            assert_eq!(&op_labels[k], v, "operator pods match the gRPC rule");
        }
        assert!(
            from[0]["namespaceSelector"].is_null(),
            "same namespace only"
        );
        assert!(rules.iter().any(|r| r["ports"][0]["port"] == "metrics"));
    }
}
