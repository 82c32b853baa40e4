//! The HTTP tracer in metrics mode (its default: exchanges counted in the
//! kernel, server end only) inside the real agent process: the counts
//! reach Stats' `HttpFigures`, `/metrics` (per method, route, status,
//! service), `/api/health` and `/api/analytics`, exactly; the client end is
//! not traced; only path announcements travel as events; the rules' route
//! patterns name counted paths too. Needs root.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bpfleet_proto::v1 as pb;
use bpfleet_tracer::event::config;
use common::http::*;
use common::*;

const SLOW: Duration = Duration::from_millis(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counted_exchanges_reach_stats_metrics_and_the_api() {
    let root = PinRoot::new("http-metrics");
    let mport = free_port();
    let mlisten = format!("127.0.0.1:{mport}");
    let agent = AgentProc::start(
        &root,
        None,
        &[
            "--allow-unsigned",
            "--metrics-listen",
            &mlisten,
            "--http-route",
            "/items/{item}",
        ],
    );
    let mut c = agent.client().await;
    c.load(tracer_req("r1")).await.unwrap();
    let server = TestServer::with_slow(SLOW);
    let python = python_in(None);
    c.update_config(pb::UpdateConfigRequest {
        program: PROGRAM.into(),
        map: "bpfleet_ports".into(),
        entries: [server.port, python.port]
            .iter()
            .map(|p| pb::ConfigEntry {
                key: p.to_ne_bytes().to_vec(),
                value: vec![1],
            })
            .collect(),
        replace: false,
        namespaces: None,
    })
    .await
    .unwrap();
    c.update_config(pb::UpdateConfigRequest {
        program: PROGRAM.into(),
        map: String::new(),
        entries: vec![pb::ConfigEntry {
            key: config::PORT_FILTER.to_ne_bytes().to_vec(),
            value: 1u64.to_ne_bytes().to_vec(),
        }],
        replace: false,
        namespaces: None,
    })
    .await
    .unwrap();
    c.activate(pb::ActivateRequest {
        program: PROGRAM.into(),
        revision: "r1".into(),
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(mport, "/api/health");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        if h["tracer"]["programs"][0]["reader_running"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "no tracer reader: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let base = format!("http://127.0.0.1:{}", server.port);
    let codes = curl(
        &[],
        &[
            format!("{base}/ok?token=x"),
            format!("{base}/ok"),
            format!("{base}/ok"),
            format!("{base}/missing"),
            format!("{base}/missing"),
            format!("{base}/boom"),
            format!("{base}/slow"),
            format!("{base}/slow"),
            format!("{base}/items/7"),
        ],
    );
    assert_eq!(codes, [200, 200, 200, 404, 404, 500, 200, 200, 201]);
    let post: Vec<String> = ["-X", "POST", "-d", "x"].map(String::from).to_vec();
    let codes = curl(&post, &[format!("{base}/items/42")]);
    assert_eq!(codes, [201]);
    let pybase = format!("http://127.0.0.1:{}", python.port);
    let codes = curl(
        &[],
        &[
            format!("{pybase}/hello.txt"),
            format!("{pybase}/hello.txt"),
            format!("{pybase}/nope"),
        ],
    );
    assert_eq!(codes, [200, 200, 404]);

    // Server end only: 10 exchanges with the Rust server, 3 with Python.
    let total = 13;
    let f = wait_requests(&mut c, "r1", total).await;
    let r1 = &f["r1"];
    assert_eq!(r1.errors, 1, "the 500; 404s are no gate errors");
    assert_eq!(r1.latency_bucket_counts.iter().sum::<u64>(), total);
    let le = |b: f64| {
        r1.latency_bounds_seconds
            .iter()
            .position(|x| *x == b)
            .unwrap()
    };
    assert_eq!(r1.latency_bucket_counts[le(0.25)], 2, "/slow: {r1:?}");
    assert_eq!(
        r1.latency_bucket_counts[le(0.25) + 1..].iter().sum::<u64>(),
        0,
        "{r1:?}"
    );

    let (status, text) = get(mport, "/metrics");
    assert_eq!(status, 200);
    let m = parse_metrics(&text);
    let server_count = "http_server_request_duration_seconds_count";
    let me = self_comm();
    let by = |service: &str, method: &str, route: &str, code: &str| {
        sum(
            &m,
            server_count,
            &[
                ("service_name", service),
                ("http_request_method", method),
                ("http_route", route),
                ("http_response_status_code", code),
            ],
        )
    };
    assert_eq!(by(&me, "GET", "/ok", "200"), 3.0);
    assert_eq!(by(&me, "GET", "/missing", "404"), 2.0);
    assert_eq!(by(&me, "GET", "/boom", "500"), 1.0);
    assert_eq!(by(&me, "GET", "/slow", "200"), 2.0);
    assert_eq!(by(&me, "GET", "/items/{item}", "201"), 1.0);
    assert_eq!(by(&me, "POST", "/items/{item}", "201"), 1.0);
    assert_eq!(by("python3", "GET", "/hello.txt", "200"), 2.0);
    assert_eq!(by("python3", "GET", "/nope", "404"), 1.0);
    assert_eq!(
        sum(&m, server_count, &[("error_type", "500")]),
        1.0,
        "error.type on the 500"
    );
    assert_eq!(
        sum(&m, "http_client_request_duration_seconds_count", &[]),
        0.0,
        "the client end (curl) is not traced"
    );
    let bucket = |le: &str| {
        sum(
            &m,
            "http_server_request_duration_seconds_bucket",
            &[("http_route", "/slow"), ("le", le)],
        )
    };
    assert_eq!((bucket("0.1"), bucket("0.25")), (0.0, 2.0));
    // No body sizes in metrics mode (it does not frame bodies).
    assert_eq!(
        sum(&m, "http_server_request_body_size_bytes_count", &[]),
        0.0
    );
    assert_eq!(
        sum(
            &m,
            "bpfleet_http_requests_total",
            &[("program", PROGRAM), ("revision", "r1")]
        ),
        total as f64
    );

    let (_, body) = get(mport, "/api/health");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    let t = &h["tracer"]["programs"][0];
    assert_eq!(t["exchanges"], total, "{t}");
    assert_eq!(t["exchanges_counted_in_kernel"], total, "{t}");
    assert_eq!(t["events_lost"], 0, "{t}");
    // Events: one announcement per path key, nothing per exchange.
    let events = t["events"].as_u64().unwrap();
    assert!(events <= 9, "only path announcements: {t}");

    let (_, body) = get(mport, "/api/analytics");
    let a: serde_json::Value = serde_json::from_str(&body).unwrap();
    let text = a.to_string();
    assert!(text.contains("/hello.txt"), "{text}");

    c.unload(pb::UnloadRequest {
        program: PROGRAM.into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    drop(agent);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}
