//! A TracerPolicy's redaction and route rules as the operator sends them
//! (UpdateConfig's `tracer_rules`), applied by the HTTP tracer inside the
//! agent process to real traffic: Python's `http.server` on loopback,
//! driven by curl, the result read from `/metrics`, the OTLP spans a
//! collector in the test receives, `/api/health` and List. Then an agent
//! given its own `--http-rules` file: that file stays in force and List
//! says the operator's rules are overridden. Needs root.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bpfleet_proto::v1 as pb;
use bpfleet_tracer::event::config;
use common::http::*;
use common::*;

type Client = pb::agent_client::AgentClient<tonic::transport::Channel>;

/// Redacted once the policy's rules are in force.
const SID_SECRET: &str = "sid-POLICYSECRET-4711";
/// Sent before the rules: what the tracer shows without them.
const SID_BEFORE: &str = "sid-BEFORE-0815";

fn rules(query: &[&str], routes: &[&str]) -> pb::UpdateConfigRequest {
    pb::UpdateConfigRequest {
        program: PROGRAM.into(),
        tracer_rules: Some(pb::TracerRules {
            redact_query_params: query.iter().map(|s| s.to_string()).collect(),
            route_patterns: routes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The tracer's health entry of the program.
fn program_health(mport: u16) -> serde_json::Value {
    let (_, body) = get(mport, "/api/health");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    h["tracer"]["programs"][0].clone()
}

/// Waits until `/api/health` says whose rules the program follows and the
/// readers had a batch to pick them up.
async fn rules_in_force(mport: u16, whose: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while program_health(mport)["rules"] != whose {
        assert!(
            Instant::now() < deadline,
            "rules not {whose}: {}",
            program_health(mport)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Readers switch at their next batch: at most a poll (100 ms) away.
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// Server-side requests counted on `route`.
fn served(mport: u16, route: &str) -> f64 {
    let (_, text) = get(mport, "/metrics");
    sum(
        &parse_metrics(&text),
        "http_server_request_duration_seconds_count",
        &[("http_route", route)],
    )
}

async fn wait_served(mport: u16, route: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while served(mport, route) < n {
        assert!(
            Instant::now() < deadline,
            "{route}: {} of {n} requests counted",
            served(mport, route)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the tracer in events mode on `port`'s traffic, active.
async fn trace_port(c: &mut Client, mport: u16, port: u16) {
    c.load(tracer_req("r1")).await.unwrap();
    c.update_config(ports_write(PROGRAM, &[port], false))
        .await
        .unwrap();
    c.update_config(slots_write(
        PROGRAM,
        &[(config::PORT_FILTER, 1), (config::EVENTS, 1)],
    ))
    .await
    .unwrap();
    c.activate(pb::ActivateRequest {
        program: PROGRAM.into(),
        revision: "r1".into(),
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while program_health(mport)["reader_running"] != true {
        assert!(Instant::now() < deadline, "no tracer reader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn unload(c: &mut Client, root: &PinRoot) {
    c.unload(pb::UnloadRequest {
        program: PROGRAM.into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}

/// The operator's rules, applied to real traffic: the route pattern names
/// `/items/{item}` (the heuristic would say `/items/{id}`), the query
/// parameter's value never leaves the agent again; empty rules put the
/// agent's own back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_rules_name_routes_and_redact_on_real_traffic() {
    let root = PinRoot::new("httprules");
    let mport = free_port();
    let mlisten = format!("127.0.0.1:{mport}");
    let collector = Collector::default();
    let otlp = format!("http://127.0.0.1:{}", collector.start().await);
    let log = root.scratch.path().join("agent.log");
    let agent = AgentProc::start_logged(
        &root,
        &[
            "--allow-unsigned",
            "--metrics-listen",
            &mlisten,
            "--otlp-endpoint",
            &otlp,
        ],
        &[("RUST_LOG", "info,bpfleet_agent=debug")],
        &log,
    );
    let python = python_in(None);
    let base = format!("http://127.0.0.1:{}", python.port);
    let mut c = agent.client().await;
    trace_port(&mut c, mport, python.port).await;
    assert_eq!(program_health(mport)["rules"], "node");

    // Without the policy's rules: the heuristic route, the value as sent.
    assert_eq!(
        curl(&[], &[format!("{base}/items/41?sid={SID_BEFORE}")]),
        [404]
    );
    wait_served(mport, "/items/{id}", 1.0).await;
    let query_of = |needle: &str| {
        collector
            .spans()
            .iter()
            .filter_map(|(_, s)| attr(s, "url.query"))
            .find(|q| q.contains(needle))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while query_of(SID_BEFORE).is_none() {
        assert!(Instant::now() < deadline, "no span of the first request");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A rule that does not compile is refused whole, naming the field.
    let mut bad = rules(&["sid"], &["/items/{item}"]);
    bad.tracer_rules
        .as_mut()
        .unwrap()
        .redact_command_line_patterns = vec!["(".into()];
    let e = c.update_config(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("redaction.commandLinePatterns[0]"),
        "{}",
        e.message()
    );
    assert_eq!(program_health(mport)["rules"], "node", "nothing applied");

    // The policy's rules.
    c.update_config(rules(&["sid"], &["/items/{item}"]))
        .await
        .unwrap();
    rules_in_force(mport, "policy").await;
    let listed = c
        .list(pb::ListRequest {
            program: PROGRAM.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let held = &listed.programs[0];
    assert_eq!(
        held.tracer_rules.as_ref().unwrap().route_patterns,
        ["/items/{item}"]
    );
    assert!(!held.tracer_rules_overridden);
    assert_eq!(
        curl(
            &[],
            &[
                format!("{base}/items/42?sid={SID_SECRET}"),
                format!("{base}/items/43?sid={SID_SECRET}"),
            ]
        ),
        [404, 404]
    );
    wait_served(mport, "/items/{item}", 2.0).await;
    assert_eq!(served(mport, "/items/{id}"), 1.0, "only the first request");
    let deadline = Instant::now() + Duration::from_secs(15);
    while query_of("sid=[REDACTED]").is_none() {
        assert!(
            Instant::now() < deadline,
            "no span with the policy's redaction"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The state file keeps the rules across restarts, not the secret.
    let state = std::fs::read_to_string(root.state_file()).unwrap();
    assert!(state.contains("/items/{item}"), "{state}");
    let everything = [
        get(mport, "/metrics").1,
        get(mport, "/api/analytics").1,
        get(mport, "/api/health").1,
        format!("{:?}", collector.spans()),
        std::fs::read_to_string(root.audit_log()).unwrap(),
        state,
        std::fs::read_to_string(&log).unwrap(),
    ];
    for (i, text) in everything.iter().enumerate() {
        assert!(!text.contains(SID_SECRET), "secret leaked in source {i}");
    }

    // Empty rules: the agent's own again.
    c.update_config(rules(&[], &[])).await.unwrap();
    rules_in_force(mport, "node").await;
    assert_eq!(curl(&[], &[format!("{base}/items/44")]), [404]);
    wait_served(mport, "/items/{id}", 2.0).await;
    assert_eq!(served(mport, "/items/{item}"), 2.0);

    unload(&mut c, &root).await;
    drop(agent);
}

/// An agent given `--http-rules` keeps that file's rules: the operator's
/// are held (and listed) but overridden, and the file's route names the
/// traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_rules_file_wins_over_the_operators_rules() {
    let root = PinRoot::new("httprulesfile");
    let file = root.scratch.path().join("policy.yaml");
    std::fs::write(&file, "routes:\n  patterns: [\"/items/{fromfile}\"]\n").unwrap();
    let mport = free_port();
    let mlisten = format!("127.0.0.1:{mport}");
    let agent = AgentProc::start(
        &root,
        None,
        &[
            "--allow-unsigned",
            "--metrics-listen",
            &mlisten,
            "--http-rules",
            file.to_str().unwrap(),
        ],
    );
    let python = python_in(None);
    let base = format!("http://127.0.0.1:{}", python.port);
    let mut c = agent.client().await;
    trace_port(&mut c, mport, python.port).await;
    c.update_config(rules(&[], &["/items/{item}"]))
        .await
        .unwrap();
    let listed = c
        .list(pb::ListRequest {
            program: PROGRAM.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let held = &listed.programs[0];
    assert_eq!(
        held.tracer_rules.as_ref().unwrap().route_patterns,
        ["/items/{item}"]
    );
    assert!(held.tracer_rules_overridden, "{held:?}");
    // Give the readers the time they would need to switch, then check
    // they did not.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(program_health(mport)["rules"], "node");
    assert_eq!(curl(&[], &[format!("{base}/items/7")]), [404]);
    wait_served(mport, "/items/{fromfile}", 1.0).await;
    assert_eq!(served(mport, "/items/{item}"), 0.0);

    unload(&mut c, &root).await;
    drop(agent);
}
