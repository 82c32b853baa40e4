//! Bad values are refused at render time by the values schema or the
//! templates' own checks, with an error that names the offending field.

use crate::support::render_fails;

#[test]
fn bad_values_fail_with_the_field_named() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["--set", "operator.replicas=0"], &["/operator/replicas"]),
        (&["--set", "agent.grpcPort=70000"], &["/agent/grpcPort"]),
        (&["--set", "tls.mode=selfsigned"], &["/tls/mode"]),
        (
            &["--set", "agent.seccompProfile=Unconfied"],
            &["seccompProfile"],
        ),
        (&["--set", "operator.replica=2"], &["'replica' not allowed"]),
        (&["--set", "agent.pinRoot=/var/run/bpf"], &["pinRoot"]),
        (
            &["--set", "monitoring.prometheusRule.httpErrorRatio=5"],
            &["httpErrorRatio"],
        ),
        (&["--set", "agent.image.digest=latest"], &["digest"]),
        (
            &["--set-string", "operator.agentSelector=tier in (agent)"],
            &["/operator/agentSelector"],
        ),
        (
            &["--set", "operator.leaderElection.enabled=false"],
            &["operator.leaderElection.enabled"],
        ),
        (
            &["--set", "agent.metricsPort=50051"],
            &["agent.grpcPort and agent.metricsPort"],
        ),
        (
            &["--set", "tls.mode=existing"],
            &["tls.existing.agentSecret"],
        ),
        (&["--set", "otlp.enabled=true"], &["otlp.endpoint"]),
        (
            &["--set", "agent.cpuBudget.periodSeconds=0"],
            &["/agent/cpuBudget/periodSeconds"],
        ),
        (
            &["--set", "agent.cpuBudget.samplingFloorPpm=2000000"],
            &["/agent/cpuBudget/samplingFloorPpm"],
        ),
        (
            &["--set", "agent.imageCache.maxBytes=0"],
            &["/agent/imageCache/maxBytes"],
        ),
        (
            &["--set", "agent.registries.insecure={http://r.example:5000}"],
            &["/agent/registries/insecure/0"],
        ),
        (
            &["--set", "agent.registries.caBundle=Registry_CA"],
            &["/agent/registries/caBundle"],
        ),
        (&["--set", "agent.registries.ca=x"], &["'ca' not allowed"]),
        (
            &[
                "--set",
                "monitoring.prometheusRule.runbookBaseUrl=docs/runbooks",
            ],
            &["/monitoring/prometheusRule/runbookBaseUrl"],
        ),
        (
            &["--set", "monitoring.alertmanagerConfig.enabled=true"],
            &["monitoring.alertmanagerConfig.receivers.pager"],
        ),
        (
            &[
                "--set",
                "monitoring.alertmanagerConfig.receivers.chat.telegramConfigs[0].chatID=1",
            ],
            &[
                "/monitoring/alertmanagerConfig/receivers/chat",
                "telegramConfigs",
            ],
        ),
        (
            &[
                "--set",
                "monitoring.alertmanagerConfig.pagerRepeatInterval=soon",
            ],
            &["/monitoring/alertmanagerConfig/pagerRepeatInterval"],
        ),
    ];
    for (args, wanted) in cases {
        let err = render_fails(args);
        for w in *wanted {
            assert!(err.contains(w), "{args:?}: error does not name {w}:\n{err}");
        }
    }
}
