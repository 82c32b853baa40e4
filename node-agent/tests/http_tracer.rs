//! The HTTP tracer running inside the agent process: the real tracer
//! object loaded over gRPC (Unix socket) in two revisions, a small Rust
//! server and Python's `http.server` on loopback, driven by curl and by a
//! Rust keep-alive client. Asserts exact counts per method, route, status
//! and side on `/metrics` and in Stats' `HttpFigures`, the latency bucket
//! of a handler that sleeps a known time, 4xx/5xx classification, per-
//! revision attribution across a switch, `/api/health` and
//! `/api/analytics`, OTLP spans received by a gRPC trace collector in the
//! test (the real OTLP protocol; no Jaeger on these machines), and that an
//! Authorization header value, a Cookie value, a token query value, and a
//! header and query value redacted by the TracerPolicy's own rules
//! (`--http-rules`) never show anywhere the agent exposes or writes: every
//! route of its metrics port, Stats, spans, audit log, state file, its own
//! output at trace level, the maps under its pin root. The policy's route
//! pattern names the route.
//! Needs root.
//!
//! The namespace filter is tested in `http_namespace_filter.rs`, switches
//! under traffic in `http_tracer_switch.rs`; shared helpers are in
//! `common/http.rs`.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bpfleet_proto::v1 as pb;
use bpfleet_tracer::PROGRAMS;
use bpfleet_tracer::event::config;
use common::http::*;
use common::*;
use opentelemetry_proto::tonic::trace::v1::Span;

const SECRET: &str = "s3cr3t-bearer-XYZZY";
const QUERY_SECRET: &str = "qwerty-QUERYSECRET";
/// Redacted only because the TracerPolicy's rules say so.
const SID_SECRET: &str = "sid-SESSIONID-777";
const HEADER_SECRET: &str = "hdr-XSESSION-888";
/// A session cookie: redacted by the built-in rules (`Cookie`).
const COOKIE_SECRET: &str = "ck-COOKIEJAR-555";
/// Redacted only after the policy file changes under the running agent.
const LATE_SECRET: &str = "late-RELOADED-999";
/// A TracerPolicy manifest as `kubectl get -o yaml` prints it: its
/// redaction and route rules are what the agent's tracer applies
/// (`--http-rules`). The route pattern's name differs from what the
/// heuristic would make of `/items/42` (`/items/{id}`).
const POLICY: &str = "apiVersion: bpfleet.dev/v1alpha1
kind: TracerPolicy
metadata:
  name: http-rules
spec:
  targets:
    programNames: [http-tracer]
  config:
    redaction:
      headers: [X-Session]
      queryParams: [sid]
      commandLinePatterns: [\"(--bind )\\\\S+\"]
    routes:
      patterns: [\"/items/{item}\"]
";
/// What the slow handler sleeps: inside the (0.1, 0.25] s bucket.
const SLOW: Duration = Duration::from_millis(180);

/// `n` keep-alive GET /ok on one connection, with a bearer token.
fn rust_client(port: u16, n: usize) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let want = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".len();
    let mut buf = [0u8; 256];
    for _ in 0..n {
        // One write per request (write! would make several, and Nagle's
        // algorithm would then hold the last one back for an ACK).
        let req = format!("GET /ok HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {SECRET}\r\n\r\n");
        c.write_all(req.as_bytes()).unwrap();
        let mut got = 0;
        while got < want {
            let k = c.read(&mut buf).unwrap();
            assert!(k > 0, "server closed");
            got += k;
        }
    }
}

/// curl on `urls` (one process, so one keep-alive connection per host),
/// with a bearer token and a session header; returns the status codes.
fn curl(extra: &[&str], urls: &[String]) -> Vec<u16> {
    let mut args: Vec<String> = vec![
        "-H".into(),
        format!("Authorization: Bearer {SECRET}"),
        "-H".into(),
        format!("X-Session: {HEADER_SECRET}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    common::http::curl(&args, urls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracer_in_the_agent_exports_exact_figures() {
    let root = PinRoot::new("http");
    let rules = root.scratch.path().join("policy.yaml");
    std::fs::write(&rules, POLICY).unwrap();
    let mport = free_port();
    let mlisten = format!("127.0.0.1:{mport}");
    let collector = Collector::default();
    let otlp = format!("http://127.0.0.1:{}", collector.start().await);
    // The agent's own output, at its most verbose, is searched for
    // secrets too.
    let log = root.scratch.path().join("agent.log");
    let agent = AgentProc::start_logged(
        &root,
        &[
            "--allow-unsigned",
            "--metrics-listen",
            &mlisten,
            "--http-rules",
            rules.to_str().unwrap(),
            "--http-alert",
            "Errors5xx=error_rate>0.05/1m/3",
            "--otlp-endpoint",
            &otlp,
            "--http-request-timeout-seconds",
            "1",
        ],
        &[(
            "RUST_LOG",
            "info,bpfleet_agent=trace,bpfleet_tracer=trace,bpfleet_httptrace=trace",
        )],
        &log,
    );
    let mut c = agent.client().await;
    let mut ids = Vec::new();
    for rev in ["r1", "r2"] {
        let r = c.load(tracer_req(rev)).await.unwrap().into_inner();
        ids.extend(r.revision.unwrap().prog_ids);
    }
    assert_eq!(ids.len(), 2 * PROGRAMS.len());

    let server = TestServer::with_slow(SLOW);
    let python = python_in(None);
    // Only our servers' ports: nothing else on the machine is counted.
    for port in [server.port, python.port] {
        c.update_config(ports_write(PROGRAM, &[port], false))
            .await
            .unwrap();
    }
    // Events mode, both ends: this test checks what only events give
    // (spans, body sizes, both sides); metrics mode has its own test.
    c.update_config(slots_write(
        PROGRAM,
        &[
            (config::PORT_FILTER, 1),
            (config::EVENTS, 1),
            (config::ENDS, config::ENDS_BOTH),
        ],
    ))
    .await
    .unwrap();
    c.activate(pb::ActivateRequest {
        program: PROGRAM.into(),
        revision: "r1".into(),
    })
    .await
    .unwrap();

    // The agent notices the tracer and starts a reader.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(mport, "/api/health");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        let t = &h["tracer"]["programs"][0];
        if status == 200 && t["reader_running"] == true && t["active_revision"] == "r1" {
            assert_eq!(h["ready"], true);
            assert_eq!(t["program"], PROGRAM);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no tracer reader: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The kernel side was told to ignore the agent itself (audited).
    let audit = std::fs::read_to_string(root.audit_log()).unwrap();
    assert!(audit.contains("agent:http-tracer"), "{audit}");

    // Traffic under r1.
    let base = format!("http://127.0.0.1:{}", server.port);
    // A session cookie on these GETs only: with it, a POST's head would
    // pass the default 256 captured bytes before its Content-Length.
    let cookie = format!("Cookie: session={COOKIE_SECRET}; theme=dark");
    let codes = curl(
        &["-H", &cookie],
        &[
            format!("{base}/ok?token={QUERY_SECRET}&sid={SID_SECRET}"),
            format!("{base}/ok"),
            format!("{base}/ok"),
            format!("{base}/missing"),
            format!("{base}/missing"),
            format!("{base}/boom"),
            format!("{base}/slow"),
            format!("{base}/slow"),
        ],
    );
    assert_eq!(codes, [200, 200, 200, 404, 404, 500, 200, 200]);
    let codes = curl(
        &["-X", "POST", "-d", "{\"n\":1}"],
        &[format!("{base}/items/42")],
    );
    assert_eq!(codes, [201]);
    let port = server.port;
    tokio::task::spawn_blocking(move || rust_client(port, 20))
        .await
        .unwrap();
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

    // Every exchange is seen from both ends: 9 curl + 20 Rust client
    // requests to the Rust server, 3 curl requests to Python.
    let total = 2 * (9 + 20 + 3);
    let f = wait_requests(&mut c, "r1", total).await;
    let r1 = &f["r1"];
    assert_eq!(
        r1.errors, 2,
        "the 500 on both sides; 404s are no gate errors"
    );
    assert_eq!(
        r1.latency_bounds_seconds.len() + 1,
        r1.latency_bucket_counts.len()
    );
    assert_eq!(r1.latency_bucket_counts.iter().sum::<u64>(), total);
    let le = |b: f64| {
        r1.latency_bounds_seconds
            .iter()
            .position(|x| *x == b)
            .unwrap()
    };
    assert_eq!(
        r1.latency_bucket_counts[le(0.25)],
        4,
        "the two /slow exchanges, server and client side, in (0.1, 0.25]: {r1:?}"
    );
    assert_eq!(
        r1.latency_bucket_counts[le(0.25) + 1..].iter().sum::<u64>(),
        0,
        "nothing slower: {r1:?}"
    );
    assert_eq!(f["r2"].requests, 0, "r2 was never active");

    // Metrics, per side, method, route and status.
    let (status, text) = get(mport, "/metrics");
    assert_eq!(status, 200);
    let m = parse_metrics(&text);
    let me = self_comm();
    let server_count = "http_server_request_duration_seconds_count";
    let client_count = "http_client_request_duration_seconds_count";
    let rust = [("service_name", me.as_str())];
    let by = |name: &str, extra: &[(&str, &str)], route: &str, code: &str| {
        let mut want = vec![("http_route", route), ("http_response_status_code", code)];
        want.extend_from_slice(extra);
        sum(&m, name, &want)
    };
    let get_ = [("http_request_method", "GET")];
    assert_eq!(by(server_count, &[rust[0], get_[0]], "/ok", "200"), 23.0);
    assert_eq!(by(server_count, &rust, "/missing", "404"), 2.0);
    assert_eq!(by(server_count, &rust, "/boom", "500"), 1.0);
    assert_eq!(by(server_count, &rust, "/slow", "200"), 2.0);
    assert_eq!(
        by(
            server_count,
            &[rust[0], ("http_request_method", "POST")],
            "/items/{item}",
            "201"
        ),
        1.0
    );
    let py = [("service_name", "python3")];
    assert_eq!(by(server_count, &py, "/hello.txt", "200"), 2.0);
    assert_eq!(by(server_count, &py, "/nope", "404"), 1.0);
    // Client side: curl's and the Rust client's.
    assert_eq!(by(client_count, &get_, "/ok", "200"), 23.0);
    assert_eq!(by(client_count, &rust, "/ok", "200"), 20.0);
    assert_eq!(by(client_count, &[], "/missing", "404"), 2.0);
    assert_eq!(by(client_count, &[], "/hello.txt", "200"), 2.0);
    assert_eq!(by(client_count, &[], "/items/{item}", "201"), 1.0);
    // error.type: the 500 on both sides, 404 only on the client side.
    assert_eq!(sum(&m, server_count, &[("error_type", "500")]), 1.0);
    assert_eq!(sum(&m, server_count, &[("error_type", "404")]), 0.0);
    assert_eq!(sum(&m, client_count, &[("error_type", "404")]), 3.0);
    // Latency buckets of /slow (cumulative le).
    let bucket = |le: &str| {
        sum(
            &m,
            "http_server_request_duration_seconds_bucket",
            &[("http_route", "/slow"), ("le", le)],
        )
    };
    assert_eq!((bucket("0.1"), bucket("0.25")), (0.0, 2.0));
    // Body sizes: the POST's 7-byte request body, "created" (7 bytes).
    assert_eq!(
        sum(
            &m,
            "http_server_request_body_size_bytes_sum",
            &[("http_route", "/items/{item}")]
        ),
        7.0
    );
    assert_eq!(
        sum(
            &m,
            "http_server_response_body_size_bytes_sum",
            &[("http_route", "/items/{item}")]
        ),
        7.0
    );
    // Tracer health and per-revision counters.
    let prog = [("program", PROGRAM)];
    assert_eq!(sum(&m, "bpfleet_tracer_events_lost_total", &prog), 0.0);
    assert_eq!(sum(&m, "bpfleet_tracer_parse_errors_total", &prog), 0.0);
    assert!(sum(&m, "bpfleet_tracer_events_total", &prog) > 0.0);
    assert_eq!(sum(&m, "bpfleet_tracer_reader_up", &prog), 1.0);
    assert_eq!(
        sum(&m, "bpfleet_http_requests_total", &[("revision", "r1")]),
        total as f64
    );
    assert_eq!(
        sum(&m, "bpfleet_http_errors_total", &[("revision", "r1")]),
        2.0
    );

    // One OTLP span per exchange, by service, kind, name and status.
    let deadline = Instant::now() + Duration::from_secs(15);
    while collector.spans().len() < total as usize && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = collector.spans();
    assert_eq!(spans.len(), total as usize);
    const SERVER: i32 = 2;
    const CLIENT: i32 = 3;
    let named = |service: Option<&str>, kind: i32, name: &str| -> Vec<&Span> {
        spans
            .iter()
            .filter(|(svc, s)| service.is_none_or(|w| w == svc) && s.kind == kind && s.name == name)
            .map(|(_, s)| s)
            .collect()
    };
    assert_eq!(named(Some(&me), SERVER, "GET /ok").len(), 23);
    assert_eq!(named(None, CLIENT, "GET /ok").len(), 23);
    assert_eq!(named(Some("python3"), SERVER, "GET /hello.txt").len(), 2);
    assert_eq!(named(Some(&me), SERVER, "POST /items/{item}").len(), 1);
    let boom = named(Some(&me), SERVER, "GET /boom");
    assert_eq!(boom.len(), 1);
    assert_eq!(
        boom[0].status.as_ref().map(|s| s.code),
        Some(2),
        "status error"
    );
    assert_eq!(
        attr(boom[0], "http.response.status_code").as_deref(),
        Some("500")
    );
    assert_eq!(attr(boom[0], "error.type").as_deref(), Some("500"));
    let missing = named(Some(&me), SERVER, "GET /missing");
    assert_eq!(
        missing[0].status.as_ref().map_or(0, |s| s.code),
        0,
        "404 is no server error"
    );
    for s in named(Some(&me), SERVER, "GET /slow") {
        let d = s.end_time_unix_nano - s.start_time_unix_nano;
        assert!((170_000_000..250_000_000).contains(&d), "/slow span {d} ns");
        assert_eq!(attr(s, "server.port"), Some(server.port.to_string()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    for (_, s) in &spans {
        assert!(
            s.end_time_unix_nano <= now && now - s.end_time_unix_nano < 120_000_000_000,
            "span times are wall-clock: {s:?}"
        );
    }
    assert!(
        spans.iter().any(
            |(_, s)| attr(s, "url.query").as_deref() == Some("token=[REDACTED]&sid=[REDACTED]")
        ),
        "the token (built-in rule) and sid (the policy's rule) query values are redacted in spans"
    );
    // Each span names its process's command line, redacted by the policy's
    // own pattern: python's bind address is gone.
    // (The interpreter's path depends on the machine: pyenv's shim, say.)
    let python_args = format!("python3 -m http.server {} --bind [REDACTED]", python.port);
    for s in named(Some("python3"), SERVER, "GET /hello.txt") {
        let line = attr(s, "process.command_line").unwrap_or_default();
        assert!(line.ends_with(&python_args), "{line}");
        assert!(!line.contains("127.0.0.1"), "{line}");
    }
    assert!(
        named(Some(&me), SERVER, "GET /ok")
            .iter()
            .all(|s| attr(s, "process.command_line").is_some_and(|c| c.contains(&me))),
        "the test binary's own command line"
    );
    let (_, text) = get(mport, "/metrics");
    assert_eq!(
        sum(
            &parse_metrics(&text),
            "bpfleet_tracer_spans_exported_total",
            &[]
        ),
        total as f64
    );

    // Analytics: the Rust server's /ok over every window.
    let (status, body) = get(mport, "/api/analytics");
    assert_eq!(status, 200);
    let a: serde_json::Value = serde_json::from_str(&body).unwrap();
    let series = a["series"].as_array().unwrap();
    let ok = series
        .iter()
        .find(|s| s["service"] == me.as_str() && s["route"] == "/ok" && s["side"] == "server")
        .unwrap_or_else(|| panic!("no /ok series: {body}"));
    for w in ["1m", "5m", "15m", "1h"] {
        assert_eq!(ok["windows"][w]["requests"], 23, "{w}");
        assert_eq!(ok["windows"][w]["error_rate"], 0.0, "{w}");
    }
    let slow = series
        .iter()
        .find(|s| s["service"] == me.as_str() && s["route"] == "/slow" && s["side"] == "server")
        .unwrap();
    let p99 = slow["windows"]["1m"]["p99_seconds"].as_f64().unwrap();
    assert!((0.17..0.25).contains(&p99), "p99 of /slow: {p99}");
    // A request that never gets an answer: curl gives up after 2 s, the
    // agent calls it a timeout after 1 s, on both sides.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "2", "-o", "/dev/null"])
        .arg(format!("{base}/hang"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(28), "curl timed out");
    let f = wait_requests(&mut c, "r1", total + 2).await;
    assert_eq!(f["r1"].errors, 2 + 2, "unanswered requests are gate errors");
    let (_, text) = get(mport, "/metrics");
    let m = parse_metrics(&text);
    for name in [server_count, client_count] {
        assert_eq!(
            sum(
                &m,
                name,
                &[
                    ("http_route", "/hang"),
                    ("error_type", "timeout"),
                    ("http_response_status_code", "")
                ]
            ),
            1.0,
            "{name}"
        );
    }

    // The in-process rule (error rate > 5 % over 1m, at least 3 requests)
    // has not fired: /boom had one request. Two more make it fire.
    let (_, text) = get(mport, "/metrics");
    assert_eq!(
        sum(&parse_metrics(&text), "bpfleet_http_alert_firing", &[]),
        0.0,
        "{text}"
    );
    let codes = curl(&[], &[format!("{base}/boom"), format!("{base}/boom")]);
    assert_eq!(codes, [500, 500]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = get(mport, "/metrics");
        let m = parse_metrics(&text);
        let firing = sum(
            &m,
            "bpfleet_http_alert_firing",
            &[
                ("rule", "Errors5xx"),
                ("http_route", "/boom"),
                ("side", "server"),
            ],
        );
        if firing == 1.0 {
            // The client side fires too when curl's name was resolved the
            // same way for all three requests (curl may exit first).
            let fired = sum(
                &m,
                "bpfleet_http_alert_transitions_total",
                &[("rule", "Errors5xx"), ("state", "firing")],
            );
            // A scrape encodes the counter before the firing gauge: one
            // that straddles the transition shows the gauge without the
            // count. The next scrape has both.
            if fired > 0.0 {
                assert!((1.0..=2.0).contains(&fired), "{fired}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "alert did not fire:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, body) = get(mport, "/api/analytics");
    assert!(
        body.contains("\"firing\":[{\"rule\":\"Errors5xx\""),
        "{body}"
    );

    // Switch to r2: new traffic counts for r2 only.
    c.activate(pb::ActivateRequest {
        program: PROGRAM.into(),
        revision: "r2".into(),
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || rust_client(port, 5))
        .await
        .unwrap();
    let f = wait_requests(&mut c, "r2", 10).await;
    assert_eq!(
        f["r1"].requests,
        total + 2 + 4,
        "r1 keeps its figures (+ /hang and 2 /boom, both sides)"
    );
    assert_eq!(f["r2"].errors, 0);

    // No secret anywhere the agent exposes or writes: every route of the
    // metrics port (and one it does not serve), Stats, the OTLP spans, the
    // audit log, the state file, its stdout and stderr, and the values of
    // every map pinned under its pin root.
    let everything = [
        get(mport, "/metrics").1,
        get(mport, "/").1,
        get(mport, "/api/analytics").1,
        get(mport, "/api/health").1,
        get(mport, "/api/nothing").1,
        format!("{:?}", figures(&mut c).await),
        format!("{:?}", collector.spans()),
        std::fs::read_to_string(root.audit_log()).unwrap(),
        std::fs::read_to_string(root.state_file()).unwrap(),
        std::fs::read_to_string(&log).unwrap(),
    ];
    assert!(
        everything[1].contains("http_requests") || everything[1].contains("bpfleet_"),
        "/ serves the metrics"
    );
    let maps = pinned_map_bytes(&root);
    for secret in [
        SECRET,
        QUERY_SECRET,
        SID_SECRET,
        HEADER_SECRET,
        COOKIE_SECRET,
    ] {
        for (i, text) in everything.iter().enumerate() {
            assert!(!text.contains(secret), "{secret} leaked in source {i}");
        }
        for (pin, bytes) in &maps {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} readable in map {}",
                pin.display()
            );
        }
    }

    // The TracerPolicy changes: the agent re-reads the file and a query
    // parameter only the new policy names is redacted from then on; a
    // policy that does not compile is refused and the rules stay.
    let health = || {
        let (_, body) = get(mport, "/api/health");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["tracer"].clone()
    };
    assert_eq!(health()["rules_generation"], 0);
    replace_file(
        &rules,
        &POLICY.replace("queryParams: [sid]", "queryParams: [sid, late]"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while health()["rules_generation"] != 1 {
        assert!(
            Instant::now() < deadline,
            "policy not reloaded: {}",
            health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Readers switch at their next batch: at most a poll (100 ms) away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let codes = curl(&[], &[format!("{base}/ok?late={LATE_SECRET}")]);
    assert_eq!(codes, [200]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !collector
        .spans()
        .iter()
        .any(|(_, s)| attr(s, "url.query").as_deref() == Some("late=[REDACTED]"))
    {
        assert!(
            Instant::now() < deadline,
            "no span with the reloaded rule applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replace_file(&rules, "routes: {patterns: [nope]}\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while health()["rules_error"].is_null() {
        assert!(
            Instant::now() < deadline,
            "bad policy not refused: {}",
            health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let h = health();
    assert_eq!(h["rules_generation"], 1, "{h}");
    assert!(
        h["rules_error"]
            .as_str()
            .unwrap()
            .contains("routes.patterns[0]"),
        "{h}"
    );
    let everything = [
        get(mport, "/metrics").1,
        get(mport, "/api/analytics").1,
        format!("{:?}", collector.spans()),
    ]
    .join("\n");
    assert!(!everything.contains(LATE_SECRET), "{LATE_SECRET} leaked");

    // Unload: the reader stops, nothing stays loaded or pinned.
    c.unload(pb::UnloadRequest {
        program: PROGRAM.into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
    for id in &ids {
        assert!(!prog_exists(*id), "program {id} still loaded");
    }
    let shown = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for id in &ids {
        assert!(
            !shown.lines().any(|l| l.starts_with(&format!("{id}: "))),
            "bpftool still shows program {id}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = get(mport, "/api/health");
        let h: serde_json::Value = serde_json::from_str(&body).unwrap();
        if h["tracer"]["programs"].as_array().unwrap().is_empty() {
            assert_eq!(status, 200);
            break;
        }
        assert!(Instant::now() < deadline, "tracer still listed: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(agent);
}

/// Replaces `path` whole, as a ConfigMap update does (a new file renamed
/// over the old one): the agent's watcher never sees it half written.
fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
