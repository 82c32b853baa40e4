//! The HTTP tracer running inside the agent process: the real tracer
//! object loaded over gRPC (Unix socket) in two revisions, a small Rust
//! server and Python's `http.server` on loopback, driven by curl and by a
//! Rust keep-alive client. Asserts exact counts per method, route, status
//! and side on `/metrics` and in Stats' `HttpFigures`, the latency bucket
//! of a handler that sleeps a known time, 4xx/5xx classification, per-
//! revision attribution across a switch, `/api/health` and
//! `/api/analytics`, OTLP spans received by a gRPC trace collector in the
//! test (the real OTLP protocol; no Jaeger on these machines), and that an
//! Authorization header value, a token query value, and a header and query
//! value redacted by the TracerPolicy's own rules (`--http-rules`) never
//! show anywhere; the policy's route pattern names the route.
//! Needs root.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use bpfleet_proto::v1 as pb;
use bpfleet_tracer::event::config;
use bpfleet_tracer::{PERSISTENT_MAPS, PROGRAMS};
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;

const PROGRAM: &str = "http-tracer";
const SECRET: &str = "s3cr3t-bearer-XYZZY";
const QUERY_SECRET: &str = "qwerty-QUERYSECRET";
/// Redacted only because the TracerPolicy's rules say so.
const SID_SECRET: &str = "sid-SESSIONID-777";
const HEADER_SECRET: &str = "hdr-XSESSION-888";
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
    routes:
      patterns: [\"/items/{item}\"]
";
/// What the slow handler sleeps: inside the (0.1, 0.25] s bucket.
const SLOW: Duration = Duration::from_millis(180);

fn tracer_req(revision: &str) -> pb::LoadRequest {
    let entries = PROGRAMS
        .iter()
        .map(|(p, tp)| entry(p, pb::HookKind::Tracepoint, tp))
        .collect();
    load_req(
        PROGRAM,
        revision,
        bpfleet_bpf::HTTP_TRACER,
        entries,
        &PERSISTENT_MAPS,
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ------------------------------------------------------------ Rust server

/// A keep-alive HTTP/1.1 server: /ok 200, /missing 404, /boom 500, /slow
/// (sleeps [`SLOW`]) 200, POST /items/<id> 201, /hang never answers.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        thread::spawn(move || serve(s));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            port,
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(stream: TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut body_len = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                body_len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; body_len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = path.split('?').next().unwrap_or("/");
        if path == "/hang" {
            // Never answers: waits for the client to give up and close.
            let mut b = [0u8; 1];
            let _ = reader.read(&mut b);
            return;
        }
        let resp: &[u8] = match path {
            "/missing" => b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found",
            "/boom" => b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\nboom",
            "/slow" => {
                thread::sleep(SLOW);
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow"
            }
            p if p.starts_with("/items/") => {
                b"HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\ncreated"
            }
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        };
        if out.write_all(resp).is_err() {
            return;
        }
    }
}

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

// ---------------------------------------------------------- other servers

/// `python3 -m http.server`, killed on drop.
struct Python {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Python {
    fn start() -> Self {
        Self::start_in(None)
    }

    /// Started in `cg` when given: moved there as soon as it is spawned,
    /// before it serves anything.
    fn start_in(cg: Option<&PodCgroup>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), "hello from python\n").unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 (apt-get install python3)");
        if let Some(cg) = cg {
            cg.adopt(child.id());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "python http.server did not start"
            );
            thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl on `urls` (one process, so one keep-alive connection per host),
/// with a bearer token; returns the status codes.
fn curl(extra: &[&str], urls: &[String]) -> Vec<u16> {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "-H".into(),
        format!("Authorization: Bearer {SECRET}"),
        "-H".into(),
        format!("X-Session: {HEADER_SECRET}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    for u in urls {
        args.extend([
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}\\n".into(),
            u.clone(),
        ]);
    }
    let out = Command::new("curl")
        .args(&args)
        .output()
        .expect("curl (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

// ---------------------------------------------------------- OTLP collector

/// An OTLP/gRPC trace collector: keeps (service.name, span).
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<std::sync::Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.clone())
                .map(|v| match v {
                    Value::StringValue(s) => s,
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start(&self) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let svc = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        port
    }

    fn spans(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .map(|v| match v {
            Value::StringValue(s) => s,
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

// ------------------------------------------------------- agent endpoints

/// GET `path` on the agent's metrics listener: (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: agent\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

type Sample = (String, BTreeMap<String, String>, f64);

/// Text exposition to samples.
fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        for kv in labels.split("\",").filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once("=\"").unwrap();
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        out.push((name.to_string(), map, value.parse().unwrap()));
    }
    out
}

/// Sum of the samples named `name` whose labels include `want`.
fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

async fn figures(
    c: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
) -> BTreeMap<String, pb::HttpFigures> {
    c.stats(pb::StatsRequest {
        program: PROGRAM.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .revisions
    .into_iter()
    .map(|r| {
        (
            r.revision.clone(),
            r.http.expect("a tracer revision has http figures"),
        )
    })
    .collect()
}

/// Polls Stats until revision `rev` counts `n` requests (then checks that
/// it stays there: nothing counted twice later).
async fn wait_requests(
    c: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
    rev: &str,
    n: u64,
) -> BTreeMap<String, pb::HttpFigures> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let f = figures(c).await;
        let got = f[rev].requests;
        if got >= n || Instant::now() > deadline {
            tokio::time::sleep(Duration::from_millis(600)).await;
            let f = figures(c).await;
            assert_eq!(f[rev].requests, n, "revision {rev}: {f:?}");
            return f;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn self_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .unwrap()
        .trim()
        .to_string()
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
    let agent = AgentProc::start(
        &root,
        None,
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
    );
    let mut c = agent.client().await;
    let mut ids = Vec::new();
    for rev in ["r1", "r2"] {
        let r = c.load(tracer_req(rev)).await.unwrap().into_inner();
        ids.extend(r.revision.unwrap().prog_ids);
    }
    assert_eq!(ids.len(), 2 * PROGRAMS.len());

    let server = Server::start();
    let python = Python::start();
    // Only our servers' ports: nothing else on the machine is counted.
    for port in [server.port, python.port] {
        c.update_config(pb::UpdateConfigRequest {
            program: PROGRAM.into(),
            map: "bpfleet_ports".into(),
            entries: vec![pb::ConfigEntry {
                key: port.to_ne_bytes().to_vec(),
                value: vec![1],
            }],
            replace: false,
            namespaces: None,
        })
        .await
        .unwrap();
    }
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
    let codes = curl(
        &[],
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

    // No secret anywhere.
    let everything = [
        get(mport, "/metrics").1,
        get(mport, "/api/analytics").1,
        get(mport, "/api/health").1,
        format!("{:?}", figures(&mut c).await),
        format!("{:?}", collector.spans()),
        std::fs::read_to_string(root.audit_log()).unwrap(),
    ]
    .join("\n");
    for secret in [SECRET, QUERY_SECRET, SID_SECRET, HEADER_SECRET] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }

    // The TracerPolicy changes: the agent re-reads the file and a query
    // parameter only the new policy names is redacted from then on; a
    // policy that does not compile is refused and the rules stay.
    let health = || {
        let (_, body) = get(mport, "/api/health");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["tracer"].clone()
    };
    assert_eq!(health()["rules_generation"], 0);
    std::fs::write(
        &rules,
        POLICY.replace("queryParams: [sid]", "queryParams: [sid, late]"),
    )
    .unwrap();
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
    std::fs::write(&rules, "routes: {patterns: [nope]}\n").unwrap();
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

/// A cgroup whose path names a pod UID, as kubelet lays them out
/// (`.../kubepods/pod<uid>/<container>`), under a directory of the test's
/// own on the cgroup2 mount; removed when dropped (after its processes).
struct PodCgroup {
    top: std::path::PathBuf,
    leaf: std::path::PathBuf,
}

impl PodCgroup {
    fn new(tag: &str, uid: &str) -> Self {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let root = mounts
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 2 && f[2] == "cgroup2")
            .map(|f| std::path::PathBuf::from(f[1]))
            .expect("a cgroup2 mount");
        let top = root.join(format!("bpfleet-test-{tag}-{}", std::process::id()));
        let leaf = top.join("kubepods").join(format!("pod{uid}")).join("web");
        std::fs::create_dir_all(&leaf).unwrap();
        Self { top, leaf }
    }

    fn adopt(&self, pid: u32) {
        std::fs::write(self.leaf.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Deepest first; a cgroup with processes cannot go, and the
        // servers are dropped before this.
        let mut dirs = vec![self.leaf.clone()];
        while let Some(parent) = dirs.last().and_then(|d| d.parent()) {
            if !parent.starts_with(&self.top) {
                break;
            }
            dirs.push(parent.to_path_buf());
        }
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

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
    let shop_cg = PodCgroup::new("shop", SHOP);
    let other_cg = PodCgroup::new("other", OTHER);
    let shop = Python::start_in(Some(&shop_cg));
    let other = Python::start_in(Some(&other_cg));

    let mut c = agent.client().await;
    c.load(tracer_req("r1")).await.unwrap();
    let slot = |k: u32, v: u64| pb::ConfigEntry {
        key: k.to_ne_bytes().to_vec(),
        value: v.to_ne_bytes().to_vec(),
    };
    c.update_config(pb::UpdateConfigRequest {
        program: PROGRAM.into(),
        map: "bpfleet_ports".into(),
        entries: [shop.port, other.port]
            .iter()
            .map(|p| pb::ConfigEntry {
                key: p.to_ne_bytes().to_vec(),
                value: vec![1],
            })
            .collect(),
        replace: true,
        namespaces: None,
    })
    .await
    .unwrap();
    let filter = |names: &[&str]| pb::UpdateConfigRequest {
        program: PROGRAM.into(),
        map: String::new(),
        entries: vec![slot(config::PORT_FILTER, 1)],
        replace: false,
        namespaces: Some(pb::NamespaceFilter {
            names: names.iter().map(|n| n.to_string()).collect(),
        }),
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
