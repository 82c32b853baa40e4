//! A TracerPolicy's alert on the HTTP error rate, as the operator sends it
//! (UpdateConfig's `alerts`), evaluated by the agent process on the HTTP
//! tracer's windows of real traffic: Python's `http.server` on loopback
//! answers POSTs with 501, driven by curl; the alert fires on the route's
//! series, shows in List, `/api/health`, `/metrics` and the audit log;
//! GETs of the route (404: not a server error) bring the rate under the
//! threshold and it resolves. The rules survive an agent
//! restart. Needs root.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bpfleet_proto::v1 as pb;
use bpfleet_tracer::event::config;
use common::http::*;
use common::*;

type Client = pb::agent_client::AgentClient<tonic::transport::Channel>;

const ALERT: &str = "ShopErrors";

fn alerts(window: &str) -> pb::UpdateConfigRequest {
    pb::UpdateConfigRequest {
        program: PROGRAM.into(),
        alerts: Some(pb::AlertRules {
            rules: vec![pb::PolicyAlert {
                name: ALERT.into(),
                signal: "ErrorRate".into(),
                threshold: 0.5,
                window: window.into(),
                severity: "Critical".into(),
                policy: "shop".into(),
                min_requests: 10,
            }],
        }),
        ..Default::default()
    }
}

fn health(mport: u16) -> serde_json::Value {
    let (_, body) = get(mport, "/api/health");
    serde_json::from_str(&body).unwrap()
}

async fn firing(c: &mut Client) -> Vec<pb::FiringAlert> {
    c.list(pb::ListRequest {
        program: PROGRAM.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .programs
    .remove(0)
    .firing_alerts
}

/// Waits until List says the alert fires (`true`) or not.
async fn wait_firing(c: &mut Client, want: bool) -> Vec<pb::FiringAlert> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let f = firing(c).await;
        if f.is_empty() != want {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "alert firing should be {want}: {f:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn metric(mport: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, text) = get(mport, "/metrics");
    sum(&parse_metrics(&text), name, labels)
}

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
    while health(mport)["tracer"]["programs"][0]["reader_running"] != true {
        assert!(Instant::now() < deadline, "no tracer reader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_alert_fires_and_resolves_on_real_traffic() {
    let root = PinRoot::new("httpalerts");
    let mport = free_port();
    let mlisten = format!("127.0.0.1:{mport}");
    let args = ["--allow-unsigned", "--metrics-listen", mlisten.as_str()];
    let log = root.scratch.path().join("agent.log");
    let mut agent = AgentProc::start_logged(&root, &args, &[], &log);
    let python = python_in(None);
    let base = format!("http://127.0.0.1:{}", python.port);
    let mut c = agent.client().await;
    trace_port(&mut c, mport, python.port).await;

    // A rule the agent cannot evaluate is refused, naming the field.
    let e = c.update_config(alerts("2m")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("alerts.rules[0].window"),
        "{}",
        e.message()
    );
    c.update_config(alerts("1m")).await.unwrap();
    let gauge = [
        ("program", PROGRAM),
        ("alertname", ALERT),
        ("severity", "Critical"),
    ];
    assert_eq!(
        metric(mport, "bpfleet_agent_policy_alert_firing", &gauge),
        0.0
    );

    // 12 POSTs: http.server answers 501, every one an error.
    let posts: Vec<String> = (0..12).map(|i| format!("{base}/orders/{i}")).collect();
    let codes = curl(&["-X".into(), "POST".into()], &posts);
    assert!(codes.iter().all(|c| *c == 501), "{codes:?}");
    let f = wait_firing(&mut c, true).await;
    assert_eq!(f.len(), 1, "{f:?}");
    let a = &f[0];
    assert_eq!(
        (a.name.as_str(), a.severity.as_str(), a.signal.as_str()),
        (ALERT, "Critical", "ErrorRate")
    );
    assert_eq!((a.window.as_str(), a.policy.as_str()), ("1m", "shop"));
    assert_eq!(
        (a.route.as_str(), a.side.as_str()),
        ("/orders/{id}", "server")
    );
    assert!(a.value > 0.5 && a.threshold == 0.5, "{a:?}");
    assert!(a.since_unix > 0);
    assert_eq!(
        metric(mport, "bpfleet_agent_policy_alert_firing", &gauge),
        1.0
    );
    let h = health(mport);
    assert_eq!(h["alerts"][0]["program"], PROGRAM, "{h}");
    assert_eq!(h["alerts"][0]["firing"][0]["alertname"], ALERT, "{h}");
    assert_eq!(h["ready"], true, "a firing alert is no readiness problem");

    // The rules are kept in the state file: a restarted agent evaluates
    // them on (its own, fresh) windows; nothing fires with no traffic.
    drop(c);
    agent.kill9();
    let agent2 = AgentProc::start_logged(&root, &args, &[], &log);
    let mut c = agent2.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(mport)["tracer"]["programs"][0]["reader_running"] != true {
        assert!(Instant::now() < deadline, "no tracer reader after restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(mport, "bpfleet_agent_policy_alert_firing", &gauge),
        0.0,
        "the restarted agent holds the rule"
    );
    let codes = curl(&["-X".into(), "POST".into()], &posts);
    assert!(codes.iter().all(|c| *c == 501), "{codes:?}");
    wait_firing(&mut c, true).await;

    // 30 GETs of the same route, answered 404 (a client's error, not the
    // server's): 12 errors of 42 is under one half; resolved.
    let gets: Vec<String> = (0..30).map(|i| format!("{base}/orders/{i}")).collect();
    let codes = curl(&[], &gets);
    assert!(codes.iter().all(|c| *c == 404), "{codes:?}");
    wait_firing(&mut c, false).await;
    assert_eq!(
        metric(mport, "bpfleet_agent_policy_alert_firing", &gauge),
        0.0
    );
    let resolved = [("alertname", ALERT), ("state", "resolved")];
    assert_eq!(
        metric(
            mport,
            "bpfleet_agent_policy_alert_transitions_total",
            &resolved
        ),
        1.0
    );
    assert!(health(mport)["alerts"].as_array().unwrap().is_empty());

    // Each transition left an audit line: fired before the restart and
    // after it, resolved once.
    let audit = std::fs::read_to_string(root.audit_log()).unwrap();
    let lines: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains(r#""action":"policy_alert""#))
        .collect();
    let count = |state: &str| {
        lines
            .iter()
            .filter(|l| l.contains(&format!(r#""result":"{state}""#)))
            .count()
    };
    assert_eq!((count("firing"), count("resolved")), (2, 1), "{audit}");
    assert!(lines[0].contains("alert ShopErrors (Critical, policy shop): ErrorRate"));

    c.unload(pb::UnloadRequest {
        program: PROGRAM.into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}
