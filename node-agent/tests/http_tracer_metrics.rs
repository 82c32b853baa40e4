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

type Client = pb::agent_client::AgentClient<tonic::transport::Channel>;

/// Writes one `bpfleet_config` slot of the tracer.
async fn set_slot(c: &mut Client, slot: u32, value: u64) {
    c.update_config(slots_write(PROGRAM, &[(slot, value)]))
        .await
        .unwrap();
}

/// The agent (metrics on a port of its own, `extra` flags) with the tracer
/// loaded and active, tracing `ports` only, its reader running: the agent,
/// a client and the metrics port.
async fn traced_agent(root: &PinRoot, ports: &[u16], extra: &[&str]) -> (AgentProc, Client, u16) {
    let mport = free_port();
    let mlisten = format!("127.0.0.1:{mport}");
    let mut args = vec!["--allow-unsigned", "--metrics-listen", &mlisten];
    args.extend_from_slice(extra);
    let agent = AgentProc::start(root, None, &args);
    let mut c = agent.client().await;
    c.load(tracer_req("r1")).await.unwrap();
    c.update_config(ports_write(PROGRAM, ports, false))
        .await
        .unwrap();
    set_slot(&mut c, config::PORT_FILTER, 1).await;
    c.activate(pb::ActivateRequest {
        program: PROGRAM.into(),
        revision: "r1".into(),
    })
    .await
    .unwrap();
    wait_reader(mport).await;
    (agent, c, mport)
}

/// A bearer token sent with the counted requests.
const METRICS_SECRET: &str = "metrics-BEARER-4242";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counted_exchanges_reach_stats_metrics_and_the_api() {
    let root = PinRoot::new("http-metrics");
    let server = TestServer::with_slow(SLOW);
    let python = python_in(None);
    let (agent, mut c, mport) = traced_agent(
        &root,
        &[server.port, python.port],
        &["--http-route", "/items/{item}"],
    )
    .await;

    let base = format!("http://127.0.0.1:{}", server.port);
    // Counted in the kernel, never sent up: the heads must not stay in
    // the tracer's pinned maps either (checked below).
    let auth = [
        "-H".to_string(),
        format!("Authorization: Bearer {METRICS_SECRET}"),
    ];
    let codes = curl(
        &auth,
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
    for (pin, bytes) in pinned_map_bytes(&root) {
        assert!(
            !bytes
                .windows(METRICS_SECRET.len())
                .any(|w| w == METRICS_SECRET.as_bytes()),
            "{METRICS_SECRET} readable in map {}",
            pin.display()
        );
    }
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

/// Sends SIGSTOP to a process, and SIGCONT when dropped (also when the
/// test fails while it is stopped).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Self {
        let ok = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -STOP {pid}");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// A reader starved of CPU loses no count: with the agent stopped
/// outright (SIGSTOP) while clients make thousands of requests over new
/// and known paths, every exchange is in the kernel's counts when it
/// resumes, per route and status, and nothing is lost; the paths first
/// seen while it was stopped are named from their announcements, which
/// waited in the ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_reader_loses_no_count() {
    let root = PinRoot::new("http-starved");
    let server = TestServer::start();
    let (agent, mut c, mport) = traced_agent(&root, &[server.port], &[]).await;
    let base = format!("http://127.0.0.1:{}", server.port);
    // Known before the stop.
    assert_eq!(curl(&[], &[format!("{base}/known")]), [200]);
    wait_requests(&mut c, "r1", 1).await;

    const CLIENTS: usize = 6;
    const PER_CLIENT: usize = 400;
    let stopped = Stopped::new(agent.pid());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                // Each client: its own new path, a known one, a 404.
                let urls: Vec<String> = (0..PER_CLIENT)
                    .map(|n| match n % 4 {
                        0 => format!("{base}/new{}", (b'a' + i as u8) as char),
                        1 | 2 => format!("{base}/known"),
                        _ => format!("{base}/missing"),
                    })
                    .collect();
                curl(&[], &urls)
            })
        })
        .collect();
    let mut codes = Vec::new();
    for t in clients {
        codes.extend(t.join().unwrap());
    }
    // The agent saw none of it yet.
    drop(stopped);
    let total = (CLIENTS * PER_CLIENT) as u64;
    assert_eq!(codes.len() as u64, total);
    let f = wait_requests(&mut c, "r1", total + 1).await;
    assert_eq!(f["r1"].requests, total + 1);

    let (_, text) = get(mport, "/metrics");
    let m = parse_metrics(&text);
    let by = |route: &str, code: &str| {
        sum(
            &m,
            "http_server_request_duration_seconds_count",
            &[("http_route", route), ("http_response_status_code", code)],
        )
    };
    let quarter = (CLIENTS * PER_CLIENT / 4) as f64;
    assert_eq!(by("/known", "200"), 2.0 * quarter + 1.0);
    assert_eq!(by("/missing", "404"), quarter);
    for i in 0..CLIENTS {
        let route = format!("/new{}", (b'a' + i as u8) as char);
        assert_eq!(by(&route, "200"), (PER_CLIENT / 4) as f64, "{route}");
    }
    let (_, body) = get(mport, "/api/health");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    let t = &h["tracer"]["programs"][0];
    assert_eq!(t["events_lost"], 0, "{t}");
    assert_eq!(t["exchanges_counted_in_kernel"], total + 1, "{t}");

    c.unload(pb::UnloadRequest {
        program: PROGRAM.into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    drop(agent);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}

/// One keep-alive request on `s`: its status (the test server's answers
/// carry a Content-Length).
fn ask(s: &mut std::net::TcpStream, path: &str) -> u16 {
    use std::io::{Read, Write};
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

/// A new agent on `root` (the tracer still loaded there), its metrics on a
/// port of its own, once its reader runs: the agent, a client and the
/// metrics port.
async fn agent_again(root: &PinRoot) -> (AgentProc, Client, u16) {
    let mport = free_port();
    let mlisten = format!("127.0.0.1:{mport}");
    let agent = AgentProc::start(
        root,
        None,
        &["--allow-unsigned", "--metrics-listen", &mlisten],
    );
    let c = agent.client().await;
    wait_reader(mport).await;
    (agent, c, mport)
}

async fn wait_reader(mport: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(mport, "/api/health");
        if serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|h| h["tracer"]["programs"][0]["reader_running"] == true)
        {
            return;
        }
        assert!(Instant::now() < deadline, "no tracer reader: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An agent that restarts (killed, the tracer left loaded and counting)
/// names the paths announced to the agent before it: its reader makes the
/// kernel announce every key again, also on a keep-alive connection that
/// already sent its path before the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_names_paths_announced_before_it() {
    let root = PinRoot::new("http-restart-paths");
    let server = TestServer::start();
    let (mut agent, mut c, _) = traced_agent(&root, &[server.port], &[]).await;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    assert_eq!(ask(&mut conn, "/known"), 200);
    let mut other = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    assert_eq!(ask(&mut other, "/also"), 200);
    wait_requests(&mut c, "r1", 2).await;
    drop(c);
    agent.kill9();
    drop(agent);

    let (agent, mut c, mport) = agent_again(&root).await;
    // The same connection and path as before the restart, a known path on
    // a new connection.
    assert_eq!(ask(&mut conn, "/known"), 200);
    assert_eq!(ask(&mut conn, "/known"), 200);
    assert_eq!(
        curl(&[], &[format!("http://127.0.0.1:{}/also", server.port)]),
        [200]
    );
    wait_requests(&mut c, "r1", 3).await;
    let (_, text) = get(mport, "/metrics");
    let m = parse_metrics(&text);
    let by = |route: &str| {
        sum(
            &m,
            "http_server_request_duration_seconds_count",
            &[("http_route", route)],
        )
    };
    assert_eq!(
        (by("/known"), by("/also"), by("/*")),
        (2.0, 1.0, 0.0),
        "{text}"
    );

    drop(conn);
    drop(other);
    c.unload(pb::UnloadRequest {
        program: PROGRAM.into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    drop(agent);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}

/// An agent stopped as the kubelet stops a pod (SIGTERM: a restart, a
/// rolling update) hands its counts over: the requests made while no
/// agent ran are reported by the next one, exactly, under their routes,
/// although no later request announces their paths again; the handover
/// file is taken and removed. (Killed outright, the next agent starts from
/// zero instead: the test above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_agent_hands_its_counts_to_the_next() {
    let root = PinRoot::new("http-handover");
    let server = TestServer::start();
    let (mut agent, mut c, mport) = traced_agent(&root, &[server.port], &[]).await;
    let base = format!("http://127.0.0.1:{}", server.port);
    assert_eq!(curl(&[], &[format!("{base}/before")]), [200]);
    wait_requests(&mut c, "r1", 1).await;
    let (_, text) = get(mport, "/metrics");
    let route = |m: &_, r: &str| {
        sum(
            m,
            "http_server_request_duration_seconds_count",
            &[("http_route", r)],
        )
    };
    assert_eq!(route(&parse_metrics(&text), "/before"), 1.0, "{text}");
    drop(c);
    assert!(agent.0.terminate().success(), "the agent stops cleanly");
    drop(agent);
    let file = root
        .state_file()
        .parent()
        .unwrap()
        .join(format!("http-tracer-{PROGRAM}.handover"));
    assert!(file.exists(), "no handover at {}", file.display());

    // No agent runs: the kernel counts on.
    let urls: Vec<String> = (0..30)
        .map(|i| match i % 3 {
            0 => format!("{base}/before"),
            1 => format!("{base}/during"),
            _ => format!("{base}/missing"),
        })
        .collect();
    assert_eq!(curl(&[], &urls).len(), 30);

    let (agent, mut c, mport) = agent_again(&root).await;
    wait_requests(&mut c, "r1", 30).await;
    let (_, text) = get(mport, "/metrics");
    let m = parse_metrics(&text);
    assert_eq!(
        (
            route(&m, "/before"),
            route(&m, "/during"),
            route(&m, "/missing"),
            route(&m, "/*")
        ),
        (10.0, 10.0, 10.0, 0.0),
        "{text}"
    );
    assert!(!file.exists(), "the handover is taken");

    c.unload(pb::UnloadRequest {
        program: PROGRAM.into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    drop(agent);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}

/// Metrics mode with half the connections sampled (`samplingRate` 0.5,
/// slot 8): the sampled ones come as events and become spans at the OTLP
/// collector, the rest are counted in the kernel, and every exchange is in
/// the figures once; spans are exactly the exchanges not counted in the
/// kernel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_connections_become_spans_and_are_counted_once() {
    let root = PinRoot::new("http-sampled");
    let server = TestServer::start();
    let collector = Collector::default();
    let otlp = format!("http://127.0.0.1:{}", collector.start().await);
    let (agent, mut c, mport) =
        traced_agent(&root, &[server.port], &["--otlp-endpoint", &otlp]).await;
    set_slot(&mut c, config::SAMPLE_PPM, 500_000).await;
    let base = format!("http://127.0.0.1:{}", server.port);
    const CONNECTIONS: u64 = 40;
    for _ in 0..CONNECTIONS {
        // One curl, one connection, two exchanges.
        let codes = curl(&[], &[format!("{base}/ok"), format!("{base}/missing")]);
        assert_eq!(codes, [200, 404]);
    }
    let total = 2 * CONNECTIONS;
    wait_requests(&mut c, "r1", total).await;
    let (_, body) = get(mport, "/api/health");
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    let t = &h["tracer"]["programs"][0];
    assert_eq!(t["exchanges"], total, "{t}");
    let in_kernel = t["exchanges_counted_in_kernel"].as_u64().unwrap();
    let sampled = total - in_kernel;
    assert!(
        sampled > 0 && in_kernel > 0,
        "half the connections sampled: {sampled} of {total} as events"
    );
    assert_eq!(sampled % 2, 0, "a connection is sampled whole: {t}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while (collector.spans().len() as u64) < sampled && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let spans = collector.spans();
    assert_eq!(spans.len() as u64, sampled, "one span per sampled exchange");
    let (_, text) = get(mport, "/metrics");
    let m = parse_metrics(&text);
    let count = |code: &str| {
        sum(
            &m,
            "http_server_request_duration_seconds_count",
            &[("http_response_status_code", code)],
        )
    };
    assert_eq!(
        (count("200"), count("404")),
        (CONNECTIONS as f64, CONNECTIONS as f64)
    );

    c.unload(pb::UnloadRequest {
        program: PROGRAM.into(),
        revision: String::new(),
    })
    .await
    .unwrap();
    drop(agent);
    assert!(root.pins().is_empty(), "pins left: {:?}", root.pins());
}
