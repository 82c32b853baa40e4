//! The HTTP tracer's metrics mode on the real kernel: exchanges counted in
//! the kernel (`http_aggs`) per process, role, method, status and path key,
//! read the way the agent reads them, against what real servers answered
//! and logged: a keep-alive server written here (curl with several URLs on
//! one connection), Python's http.server, nginx with its access log under
//! wrk, and a pipelining client (handed over to events and counted once).
//! Each test filters on its own server port and loads its own maps. Needs
//! root (CAP_BPF, CAP_PERFMON).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bpfleet_httptrace::Role;
use bpfleet_httptrace::redact::Redactor;
use bpfleet_testsupport::http::TestServer;
use bpfleet_testsupport::python::PythonServer;
use bpfleet_tracer::aggregate::{AggKey, Counts, Deltas, PATH_OVERFLOW};
use bpfleet_tracer::event::config;
use bpfleet_tracer::pipeline::{Pipeline, Traced};
use bpfleet_tracer::standalone::Standalone;

/// (role, method, path, status): what a count is reported under. The path
/// is the one the kernel announced for the key (the first seen).
type Label = (Role, String, String, Option<u16>);

struct Seen {
    counts: BTreeMap<Label, u64>,
    buckets: BTreeMap<Label, Counts>,
    /// Exchanges rebuilt from events (handed over, sampled).
    events: Vec<Traced>,
    data_events: u64,
}

impl Seen {
    fn total(&self) -> u64 {
        self.counts.values().sum::<u64>() + self.events.len() as u64
    }
}

/// Reads the counts (and the ring buffer, for path names and handed-over
/// exchanges) until `want` exchanges are seen or ten seconds passed, then
/// 300 ms more: anything more is a double count.
fn observe(tracer: &Standalone, want: u64) -> Seen {
    let aggs = tracer.aggregates().unwrap();
    let mut pipeline = Pipeline::new(Arc::new(Redactor::builtin()), 1024);
    let mut deltas = Deltas::default();
    let mut seen = Seen {
        counts: BTreeMap::new(),
        buckets: BTreeMap::new(),
        events: Vec::new(),
        data_events: 0,
    };
    let mut pending: Vec<(AggKey, Counts)> = Vec::new();
    let mut round = |seen: &mut Seen| {
        let mut data = 0;
        tracer
            .drain(Duration::from_millis(100), |raw| {
                if raw.get(48) == Some(&1) {
                    data += 1;
                }
                pipeline.handle_raw(raw, &mut seen.events)
            })
            .unwrap();
        seen.data_events += data;
        pending.extend(deltas.update(aggs.read().unwrap()));
        pending.retain(|(k, c)| {
            let path = match k.path_key {
                PATH_OVERFLOW => "(overflow)".to_string(),
                key => match pipeline.path(key) {
                    Some(p) => p.to_string(),
                    None => return true, // named by a later event
                },
            };
            let label = (
                k.role.expect("role"),
                k.method.as_str().to_string(),
                path,
                k.status,
            );
            *seen.counts.entry(label.clone()).or_default() += c.count;
            seen.buckets.entry(label).or_default().add(c);
            false
        });
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.total() < want && Instant::now() < deadline {
        round(&mut seen);
    }
    let settle = Instant::now() + Duration::from_millis(300);
    while Instant::now() < settle {
        round(&mut seen);
    }
    assert!(
        pending.is_empty(),
        "counts whose path was never announced: {pending:?}"
    );
    seen
}

fn label(role: Role, m: &str, p: &str, s: u16) -> Label {
    (role, m.to_string(), p.to_string(), Some(s))
}

fn server_only(port: u16) -> Standalone {
    Standalone::load(&[(config::PORT_FILTER, 1)], &[port]).expect("tracer loads (run as root)")
}

/// Default configuration (metrics mode, server end): curl with several URLs
/// on one keep-alive connection; every exchange counted once under its
/// method, path and status; /items/1 and /items/2 share a key (a segment
/// starting with a digit); the client end (curl) is not traced; no data
/// event reaches the ring buffer.
#[test]
fn keep_alive_exchanges_are_counted_in_the_kernel() {
    let server = TestServer::start();
    let tracer = server_only(server.port);
    let base = format!("http://127.0.0.1:{}", server.port);
    let urls: Vec<String> = [
        "/ok",
        "/ok?token=x",
        "/missing",
        "/boom",
        "/slow",
        "/chunked",
        "/items/1",
        "/items/2",
    ]
    .iter()
    .map(|p| format!("{base}{p}"))
    .collect();
    let codes = bpfleet_testsupport::http::curl(&[], &urls);
    assert_eq!(codes, vec![200, 200, 404, 500, 200, 200, 201, 201]);
    let codes = bpfleet_testsupport::http::curl(
        &["-X".into(), "POST".into(), "-d".into(), "abc".into()],
        &[format!("{base}/items/3")],
    );
    assert_eq!(codes, vec![201]);

    let seen = observe(&tracer, 9);
    let s = Role::Server;
    let want: BTreeMap<Label, u64> = [
        (label(s, "GET", "/ok", 200), 2),
        (label(s, "GET", "/missing", 404), 1),
        (label(s, "GET", "/boom", 500), 1),
        (label(s, "GET", "/slow", 200), 1),
        (label(s, "GET", "/chunked", 200), 1),
        (label(s, "GET", "/items/1", 201), 2),
        (label(s, "POST", "/items/1", 201), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen.counts, want);
    assert!(seen.events.is_empty(), "{:?}", seen.events);
    assert_eq!(seen.data_events, 0, "metrics mode sends no data events");
    // 120 ms of sleep: above the 0.1 s bound, at most 0.25 s.
    let slow = &seen.buckets[&label(s, "GET", "/slow", 200)];
    assert_eq!(slow.buckets[6], 1, "{slow:?}");
    assert!(
        (120_000_000..250_000_000).contains(&slow.sum_ns),
        "{slow:?}"
    );
    assert_eq!(tracer.lost().unwrap(), 0);
}

/// Sampled connections (`samplingRate`, slot 8) come whole as events (for
/// spans) and are not counted in the kernel as well: with half of 40
/// connections sampled, events and counts together hold every exchange
/// once, and both hold some.
#[test]
fn sampled_connections_come_as_events_and_are_counted_once() {
    let server = TestServer::start();
    let tracer = Standalone::load(
        &[(config::PORT_FILTER, 1), (config::SAMPLE_PPM, 500_000)],
        &[server.port],
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{}", server.port);
    for _ in 0..40 {
        // One curl, one connection, two exchanges.
        let codes =
            bpfleet_testsupport::http::curl(&[], &[format!("{base}/ok"), format!("{base}/boom")]);
        assert_eq!(codes, vec![200, 500]);
    }
    let seen = observe(&tracer, 80);
    assert_eq!(seen.total(), 80, "every exchange once");
    let in_events = seen.events.len();
    assert!(
        in_events > 0 && in_events < 80,
        "half the connections sampled: {in_events} of 80 in events"
    );
    assert_eq!(in_events % 2, 0, "a connection is sampled whole");
    let five_hundreds = seen
        .counts
        .iter()
        .filter(|((_, _, _, s), _)| *s == Some(500))
        .map(|(_, n)| *n)
        .sum::<u64>()
        + seen
            .events
            .iter()
            .filter(|t| t.exchange.status == Some(500))
            .count() as u64;
    assert_eq!(five_hundreds, 40);
}

/// Three requests in one write: the kernel sees the second one behind the
/// first head, hands the connection to events, and each exchange is
/// counted exactly once (by userspace), none by the kernel.
#[test]
fn pipelined_requests_are_handed_over_and_counted_once() {
    let server = TestServer::start();
    let tracer = server_only(server.port);
    let mut c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    // One request first, answered: counted in the kernel.
    c.write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    read_until(&mut c, "hello");
    c.write_all(
        b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\nPOST /missing HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabcGET /boom HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    read_until(&mut c, "boom");
    drop(c);

    let seen = observe(&tracer, 4);
    let mut got: BTreeMap<Label, u64> = seen.counts.clone();
    for t in &seen.events {
        let e = &t.exchange;
        *got.entry((e.role, e.method.clone(), e.target.clone(), e.status))
            .or_default() += 1;
    }
    let s = Role::Server;
    let want: BTreeMap<Label, u64> = [
        (label(s, "GET", "/first", 200), 1),
        (label(s, "GET", "/ok", 200), 1),
        (label(s, "POST", "/missing", 404), 1),
        (label(s, "GET", "/boom", 500), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want, "{:#?}", seen.events);
    assert_eq!(
        seen.counts.values().sum::<u64>(),
        1,
        "only /first in the kernel"
    );
}

fn read_until(c: &mut TcpStream, marker: &str) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // Generous: the tests of this file run at once on two CPUs.
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    while !String::from_utf8_lossy(&buf).contains(marker) {
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "server closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Python's http.server (a connection per request): counts by status and
/// path equal what it served.
#[test]
fn python_http_server_counts() {
    let port = bpfleet_testsupport::free_port();
    let tracer = server_only(port);
    let py = PythonServer::start_on(port, &[("index.txt", "bpfleet\n")], |_| {});
    let base = format!("http://127.0.0.1:{port}");
    for path in ["/index.txt", "/nope", "/index.txt", "/index.txt?x=1"] {
        let codes = bpfleet_testsupport::http::curl(&[], &[format!("{base}{path}")]);
        assert_eq!(codes.len(), 1);
    }
    let seen = observe(&tracer, 4);
    let s = Role::Server;
    let want: BTreeMap<Label, u64> = [
        (label(s, "GET", "/index.txt", 200), 3),
        (label(s, "GET", "/nope", 404), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen.counts, want);
    drop(py);
}

/// A path table that fills up: paths beyond the kernel's bound share the
/// overflow key, and every exchange is still counted.
#[test]
fn new_paths_past_the_bound_share_the_overflow_key() {
    let server = TestServer::start();
    let tracer = server_only(server.port);
    let mut c = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let n = 4096 + 50;
    for i in 0..n {
        c.write_all(format!("GET /p/k{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        read_until(&mut c, "hello");
    }
    drop(c);
    let seen = observe(&tracer, n);
    let overflow = seen
        .counts
        .iter()
        .filter(|((_, _, p, _), _)| p == "(overflow)")
        .map(|(_, n)| *n)
        .sum::<u64>();
    assert_eq!(seen.total(), n);
    assert_eq!(overflow, 50);
    assert_eq!(tracer.lost().unwrap(), 0);
}

/// nginx (one worker, access log on) under wrk for two seconds: the
/// kernel's counts per status equal the access log's, line for line.
#[test]
fn nginx_under_wrk_counts_equal_its_access_log() {
    let port = bpfleet_testsupport::free_port();
    let tracer = server_only(port);
    let nginx = Nginx::start(port);
    let out = Command::new("wrk")
        .args(["-t1", "-c8", "-d2s", &format!("http://127.0.0.1:{port}/")])
        .output()
        .expect("wrk runs (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // And some 404s on their own connections.
    for _ in 0..5 {
        bpfleet_testsupport::http::curl(&[], &[format!("http://127.0.0.1:{port}/nope")]);
    }
    let logged = nginx.stop_and_count();
    let total: u64 = logged.values().sum();
    assert!(total > 1000, "wrk made {total} requests");
    let seen = observe(&tracer, total);
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    for ((role, _, _, status), n) in &seen.counts {
        assert_eq!(*role, Role::Server);
        *by_status.entry(status.unwrap_or(0)).or_default() += n;
    }
    assert_eq!(by_status, logged);
    assert_eq!(tracer.lost().unwrap(), 0);
}

/// nginx in a temporary directory: `/` answers 200 from `return`, the rest
/// 404; an access log of status codes only.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  log_format st '$status';\n  access_log {d}/access.log st;\n\
               client_body_temp_path {d};\n  proxy_temp_path {d};\n  fastcgi_temp_path {d};\n\
               uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
               server {{\n    listen 127.0.0.1:{port};\n    location = / {{ return 200 'ok'; }}\n\
                 location / {{ return 404; }}\n  }}\n}}\n",
            d = dir.path().display()
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .args([
                "-c",
                &path.to_string_lossy(),
                "-p",
                &dir.path().to_string_lossy(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx runs (scripts/setup.sh installs nginx-light)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir }
    }

    /// Stops nginx (its log is complete then) and counts its lines by status.
    fn stop_and_count(mut self) -> BTreeMap<u16, u64> {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap();
        let mut m = BTreeMap::new();
        for line in log.lines() {
            *m.entry(line.trim().parse::<u16>().unwrap()).or_default() += 1;
        }
        m
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
