//! The HTTP tracer on the real kernel: its BPF side is loaded and attached,
//! real servers (one written here, Python's http.server) answer real
//! clients (curl, a Rust client) on loopback, and the exchanges rebuilt from
//! the ring buffer must match what was sent, exactly. Each test filters on
//! its own server port, so tests running side by side do not see each
//! other's traffic. Needs root (CAP_BPF, CAP_PERFMON).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpfleet_httptrace::redact::Redactor;
use bpfleet_httptrace::{Outcome, Role};
use bpfleet_testsupport::http::TestServer;
use bpfleet_testsupport::python::PythonServer;
use bpfleet_tracer::event::config;
use bpfleet_tracer::pipeline::{Pipeline, Traced};
use bpfleet_tracer::standalone::Standalone;

/// Collects exchanges until `want` arrived or ten seconds passed.
fn collect(tracer: &Standalone, pipeline: &mut Pipeline, want: usize) -> Vec<Traced> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < want && Instant::now() < deadline {
        tracer
            .drain(Duration::from_millis(100), |raw| {
                pipeline.handle_raw(raw, &mut out)
            })
            .unwrap();
    }
    // Anything more that arrives shortly after is a double count.
    tracer
        .drain(Duration::from_millis(300), |raw| {
            pipeline.handle_raw(raw, &mut out)
        })
        .unwrap();
    out
}

fn counts(x: &[Traced], role: Role) -> BTreeMap<(String, String, Option<u16>), usize> {
    let mut m = BTreeMap::new();
    for t in x.iter().filter(|t| t.exchange.role == role) {
        let e = &t.exchange;
        *m.entry((e.method.clone(), e.target.clone(), e.status))
            .or_default() += 1;
    }
    m
}

fn key(m: &str, t: &str, s: u16) -> (String, String, Option<u16>) {
    (m.to_string(), t.to_string(), Some(s))
}

/// Events mode, both ends: these tests check reassembly from the ring
/// buffer on both sides of each exchange (metrics mode has its own tests in
/// `metrics_mode.rs`).
const EVENTS_BOTH_ENDS: [(u32, u64); 2] = [(config::EVENTS, 1), (config::ENDS, config::ENDS_BOTH)];

fn tracer_for(port: u16) -> Standalone {
    let cfg = [
        EVENTS_BOTH_ENDS[0],
        EVENTS_BOTH_ENDS[1],
        (config::PORT_FILTER, 1),
    ];
    Standalone::load(&cfg, &[port]).expect("tracer loads (run as root)")
}

fn curl(local_port: Option<u16>, url: &str) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null"]);
    if let Some(p) = local_port {
        cmd.args(["--local-port", &p.to_string()]);
    }
    let status = cmd
        .arg(url)
        .stdout(Stdio::null())
        .status()
        .expect("curl runs");
    assert!(status.success(), "curl {url}");
}

/// The TracerPolicy filters of `bpfleet_gate.h` as the tracer honours them:
/// a port marked skip drops both ends of its connections even when the
/// other end's port is traced; the process filter keeps only the listed
/// processes (this one: the server side, not curl).
#[test]
fn policy_port_and_process_filters_hold_in_the_kernel() {
    let server = TestServer::start();
    let skip_port = bpfleet_testsupport::free_port();
    let cfg = [
        EVENTS_BOTH_ENDS[0],
        EVENTS_BOTH_ENDS[1],
        (config::PORT_FILTER, 3),
    ];
    let tracer = Standalone::load(&cfg, &[server.port]).unwrap();
    tracer
        .update("bpfleet_ports", &skip_port.to_ne_bytes(), &[2])
        .unwrap();
    let mut pipeline = Pipeline::new(Arc::new(Redactor::builtin()), 1024);
    let base = format!("http://127.0.0.1:{}", server.port);

    curl(Some(skip_port), &format!("{base}/from-a-skipped-port"));
    curl(None, &format!("{base}/ok"));
    let got = collect(&tracer, &mut pipeline, 2);
    let want: BTreeMap<_, _> = [(key("GET", "/ok", 200), 1)].into_iter().collect();
    assert_eq!(counts(&got, Role::Server), want, "server side");
    assert_eq!(counts(&got, Role::Client), want, "client side");

    let me = std::process::id();
    tracer
        .update("bpfleet_pids", &me.to_ne_bytes(), &[1])
        .unwrap();
    tracer
        .update(
            "bpfleet_config",
            &config::PID_FILTER.to_ne_bytes(),
            &1u64.to_ne_bytes(),
        )
        .unwrap();
    // New connections: curl's side is not this process.
    curl(None, &format!("{base}/ok?pid-filter"));
    let got = collect(&tracer, &mut pipeline, 1);
    let want: BTreeMap<_, _> = [(key("GET", "/ok?pid-filter", 200), 1)]
        .into_iter()
        .collect();
    assert_eq!(counts(&got, Role::Server), want, "this process is traced");
    assert_eq!(
        counts(&got, Role::Client),
        BTreeMap::new(),
        "curl is not in bpfleet_pids"
    );
}

#[test]
fn curl_against_a_keep_alive_server_both_sides() {
    let server = TestServer::start();
    let tracer = tracer_for(server.port);
    assert_eq!(
        tracer.programs(),
        bpfleet_tracer::PROGRAMS.len(),
        "every hook attached"
    );
    let mut pipeline = Pipeline::new(Arc::new(Redactor::builtin()), 1024);

    let base = format!("http://127.0.0.1:{}", server.port);
    let urls: Vec<String> = [
        "/ok",
        "/ok?token=SECRET-Q",
        "/missing",
        "/boom",
        "/slow",
        "/chunked",
    ]
    .iter()
    .map(|p| format!("{base}{p}"))
    .collect();
    let status = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-H",
            "Authorization: Bearer SECRET-H",
        ])
        .args(&urls)
        .stdout(Stdio::null())
        .status()
        .expect("curl runs");
    assert!(status.success());

    let got = collect(&tracer, &mut pipeline, 12);
    let want: BTreeMap<_, _> = [
        (key("GET", "/ok", 200), 1),
        (key("GET", "/ok?token=[REDACTED]", 200), 1),
        (key("GET", "/missing", 404), 1),
        (key("GET", "/boom", 500), 1),
        (key("GET", "/slow", 200), 1),
        (key("GET", "/chunked", 200), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        counts(&got, Role::Server),
        want,
        "server side (this process)"
    );
    assert_eq!(counts(&got, Role::Client), want, "client side (curl)");

    // One keep-alive connection per side.
    let server_conns: std::collections::BTreeSet<_> = got
        .iter()
        .filter(|t| t.exchange.role == Role::Server)
        .map(|t| t.conn)
        .collect();
    assert_eq!(server_conns.len(), 1);

    for t in &got {
        let e = &t.exchange;
        assert_eq!(e.outcome, Outcome::Complete);
        let shown = format!("{t:?}");
        assert!(!shown.contains("SECRET"), "secret leaked: {shown}");
        if e.target == "/slow" && e.role == Role::Server {
            let ms = e.duration_ns() as f64 / 1e6;
            // 120 ms of sleep: above the 0.1 s semconv bound, below 0.25 s.
            assert!((120.0..250.0).contains(&ms), "slow took {ms} ms");
        }
        if e.target == "/chunked" {
            // 47 bytes of head, chunks of 10 and 11 bytes, 5 of terminator.
            assert_eq!(e.response_bytes, 73, "{e:?}");
        }
    }
    assert_eq!(tracer.lost().unwrap(), 0);
    assert_eq!(pipeline.health().malformed, 0);
}

#[test]
fn pipelined_requests_from_a_rust_client() {
    let server = TestServer::start();
    let tracer = tracer_for(server.port);
    let mut pipeline = Pipeline::new(Arc::new(Redactor::builtin()), 1024);

    let mut c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    c.write_all(
        b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\nPOST /missing HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /boom HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while !String::from_utf8_lossy(&buf).contains("boom") {
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "server closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
    drop(c);

    let got = collect(&tracer, &mut pipeline, 6);
    let want: BTreeMap<_, _> = [
        (key("GET", "/ok", 200), 1),
        (key("POST", "/missing", 404), 1),
        (key("GET", "/boom", 500), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts(&got, Role::Server), want);
    assert_eq!(counts(&got, Role::Client), want);
    let post = got
        .iter()
        .find(|t| t.exchange.method == "POST" && t.exchange.role == Role::Server)
        .unwrap();
    assert_eq!(post.exchange.request_bytes, 57);
}

#[test]
fn python_http_server_seen_from_the_server_side() {
    let port = bpfleet_testsupport::free_port();
    let tracer = tracer_for(port);
    let mut pipeline = Pipeline::new(Arc::new(Redactor::builtin()), 1024);
    let py = PythonServer::start_on(port, &[("index.txt", "bpfleet\n")], |_| {});
    for path in ["/index.txt", "/nope", "/index.txt"] {
        let ok = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                &format!("http://127.0.0.1:{port}{path}"),
            ])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let py_pid = py.pid();
    let got: Vec<Traced> = collect(&tracer, &mut pipeline, 6);
    let from_python: Vec<&Traced> = got
        .iter()
        .filter(|t| t.conn.tgid == py_pid && t.exchange.role == Role::Server)
        .collect();
    let mut seen: Vec<(String, Option<u16>)> = from_python
        .iter()
        .map(|t| (t.exchange.target.clone(), t.exchange.status))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("/index.txt".into(), Some(200)),
            ("/index.txt".into(), Some(200)),
            ("/nope".into(), Some(404)),
        ],
        "{got:#?}"
    );
    assert_eq!(counts(&got, Role::Client).values().sum::<usize>(), 3);
}
