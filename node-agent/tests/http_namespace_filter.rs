//! The TracerPolicy namespace filter applied by the HTTP tracer inside the
//! agent process: Python's `http.server` in two fake pods (real cgroups
//! named as kubelet names them, a pod log directory laid out by the
//! test), curl outside any pod, the filter set and lifted over gRPC, the
//! result read from `/api/health` and `/metrics`. Needs root.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::thread;
use std::time::{Duration, Instant};

use bpfleet_proto::v1 as pb;
use bpfleet_tracer::event::config;
use common::http::*;
use common::*;

/// The TracerPolicy namespace filter as the agent applies it: two servers
/// in pods of two namespaces (real cgroups, kubelet's pod log directory
/// laid out by the test), curl outside any pod; with the filter on `shop`
/// only the shop pod's exchanges count and the rest are counted as dropped
/// in `/api/health`; lifting it counts everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_filter_keeps_only_pods_of_listed_namespaces() {
    const SHOP: &str = "0a1b2c3d-0000-4000-8000-00000000a001";
    const OTHER: &str = "0a1b2c3d-0000-4000-8000-00000000b002";
    let root = PinRoot::new("httpns");
    let pods = root.scratch.path().join("pods");
    for d in [
        format!("shop_web-a_{SHOP}/web"),
        format!("other_web-b_{OTHER}/web"),
    ] {
        std::fs::create_dir_all(pods.join(d)).unwrap();
    }
    let mport = free_port();
    let mlisten = format!("127.0.0.1:{mport}");
    let agent = AgentProc::start(
        &root,
        None,
        &[
            "--allow-unsigned",
            "--metrics-listen",
            &mlisten,
            "--pods-log-dir",
            pods.to_str().unwrap(),
        ],
    );
    let shop_cg = pod_cgroup("shop", SHOP);
    let other_cg = pod_cgroup("other", OTHER);
    let shop = python_in(Some(&shop_cg));
    let other = python_in(Some(&other_cg));

    let mut c = agent.client().await;
    c.load(tracer_req("r1")).await.unwrap();
    c.update_config(ports_write(PROGRAM, &[shop.port, other.port], true))
        .await
        .unwrap();
    // Events mode, both ends (what this test counts).
    let filter = |names: &[&str]| pb::UpdateConfigRequest {
        namespaces: Some(pb::NamespaceFilter {
            names: names.iter().map(|n| n.to_string()).collect(),
        }),
        ..slots_write(
            PROGRAM,
            &[
                (config::PORT_FILTER, 1),
                (config::EVENTS, 1),
                (config::ENDS, config::ENDS_BOTH),
            ],
        )
    };
    // Let the agent's tracer runtime see the program unfiltered first: the
    // filter must be in force when UpdateConfig returns, not at the
    // runtime's next look (every 250 ms).
    thread::sleep(Duration::from_millis(600));
    c.update_config(filter(&["shop"])).await.unwrap();
    let listed = c
        .list(pb::ListRequest {
            program: PROGRAM.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.programs[0].namespaces, ["shop"]);
    c.activate(pb::ActivateRequest {
        program: PROGRAM.into(),
        revision: "r1".into(),
    })
    .await
    .unwrap();
    let health = || {
        let (_, body) = get(mport, "/api/health");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        h["tracer"]["programs"][0].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while health()["reader_running"] != true {
        assert!(Instant::now() < deadline, "reader did not start");
        thread::sleep(Duration::from_millis(100));
    }

    let url = |p: u16| format!("http://127.0.0.1:{p}/hello.txt");
    curl(&[], &[url(shop.port), url(shop.port), url(shop.port)]);
    curl(&[], &[url(other.port), url(other.port)]);
    // Kept: the shop pod's 3 server exchanges. Dropped: the other pod's 2
    // and curl's 5 (no pod, so no namespace).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = health();
        if t["exchanges"] == 3 && t["namespace_exchanges_dropped"] == 7 {
            break;
        }
        assert!(Instant::now() < deadline, "tracer health: {t}");
        thread::sleep(Duration::from_millis(100));
    }
    let (_, text) = get(mport, "/metrics");
    let m = parse_metrics(&text);
    let count = |ns: &str| {
        sum(
            &m,
            "http_server_request_duration_seconds_count",
            &[("k8s_namespace_name", ns)],
        )
    };
    assert_eq!(count("shop"), 3.0, "{text}");
    assert_eq!(count("other"), 0.0);
    assert_eq!(
        sum(&m, "http_client_request_duration_seconds_count", &[]),
        0.0
    );

    // Lifted: the other pod counts again.
    c.update_config(filter(&[])).await.unwrap();
    curl(&[], &[url(other.port)]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = get(mport, "/metrics");
        let n = sum(
            &parse_metrics(&text),
            "http_server_request_duration_seconds_count",
            &[("k8s_namespace_name", "other")],
        );
        if n == 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        thread::sleep(Duration::from_millis(100));
    }
    c.unload(pb::UnloadRequest {
        program: PROGRAM.into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    drop(shop);
    drop(other);
}
