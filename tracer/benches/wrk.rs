//! Overhead of the HTTP tracer under load: wrk against nginx on loopback,
//! rounds alternating without and with the tracer attached, in one run.
//!
//! Run as root: `cargo bench -p bpfleet-tracer --bench wrk`
//! (needs `apt-get install wrk nginx-light`; `BENCH_ROUNDS`, `BENCH_SECONDS`
//! and `BENCH_CONNECTIONS` override 5, 5 and 32). Reports requests/s
//! (median, min-max) for both, their ratio, BPF run time per request from
//! the kernel's run_time_ns, events lost, exchanges rebuilt, and peak RSS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bpfleet_httptrace::Role;
use bpfleet_httptrace::redact::Redactor;
use bpfleet_tracer::event::config;
use bpfleet_tracer::pipeline::Pipeline;
use bpfleet_tracer::standalone::{Standalone, enable_stats};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_nginx(dir: &Path, port: u16) -> Nginx {
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; error_log {d}/error.log; pid {d}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
           server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .args([
            "-c",
            &dir.join("nginx.conf").to_string_lossy(),
            "-p",
            &d.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx runs (apt-get install nginx-light)");
    let nginx = Nginx(child);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return nginx;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nginx did not start; see {d}/error.log");
}

/// Runs wrk; returns (requests/s, requests).
fn wrk(port: u16, secs: u64, conns: u64) -> (f64, u64) {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"));
    let total = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk output:\n{text}"));
    (rps, total)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let rounds = env("BENCH_ROUNDS", 5);
    let secs = env("BENCH_SECONDS", 5);
    let conns = env("BENCH_CONNECTIONS", 32);
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _nginx = start_nginx(dir.path(), port);
    let _stats = enable_stats().expect("BPF stats (run as root)");
    wrk(port, 1, conns); // warm-up

    let mut base = Vec::new();
    let mut traced = Vec::new();
    let mut ns_per_req = Vec::new();
    let mut runs_per_req = Vec::new();
    let mut lost_total = 0;
    let mut server_exchanges = 0u64;
    let mut traced_requests = 0u64;
    for round in 0..rounds {
        let (rps, _) = wrk(port, secs, conns);
        base.push(rps);

        let tracer = Standalone::load(&[(config::PORT_FILTER, 1)], &[port]).unwrap();
        let stop = AtomicBool::new(false);
        let mut pipeline = Pipeline::new(Arc::new(Redactor::builtin()), 65536);
        let mut seen = 0u64;
        let (rps, n, (cnt0, ns0), (cnt1, ns1)) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut out = Vec::new();
                tracer
                    .run_reader(&stop, Duration::from_millis(50), |raw| {
                        pipeline.handle_raw(raw, &mut out);
                        seen += out
                            .iter()
                            .filter(|t| t.exchange.role == Role::Server)
                            .count() as u64;
                        out.clear();
                    })
                    .unwrap();
            });
            let before = tracer.run_stats();
            let (rps, n) = wrk(port, secs, conns);
            let after = tracer.run_stats();
            std::thread::sleep(Duration::from_millis(500));
            stop.store(true, Ordering::Relaxed);
            reader.join().unwrap();
            (rps, n, before, after)
        });
        runs_per_req.push((cnt1 - cnt0) as f64 / n as f64);
        traced.push(rps);
        ns_per_req.push((ns1 - ns0) as f64 / n as f64);
        let lost = tracer.lost().unwrap();
        lost_total += lost;
        server_exchanges += seen;
        traced_requests += n;
        println!(
            "round {round}: baseline {:.0} req/s, traced {:.0} req/s, {:.0} ns BPF/request, {} lost, {} of {} requests rebuilt (nginx side)",
            base[round as usize], rps, ns_per_req[round as usize], lost, seen, n
        );
    }
    let (b, bmin, bmax) = median(base);
    let (t, tmin, tmax) = median(traced);
    let (ns, nsmin, nsmax) = median(ns_per_req);
    let (runs, _, _) = median(runs_per_req);
    println!("wrk -t1 -c{conns} -d{secs}s against nginx, {rounds} rounds alternating:");
    println!("  baseline  median {b:.0} req/s (min {bmin:.0}, max {bmax:.0})");
    println!("  traced    median {t:.0} req/s (min {tmin:.0}, max {tmax:.0})");
    println!("  throughput ratio traced/baseline {:.3}", t / b);
    println!(
        "  BPF run time per request (client and server ends traced) median {ns:.0} ns (min {nsmin:.0}, max {nsmax:.0})"
    );
    println!(
        "  BPF program runs per request median {runs:.1} (every hooked syscall on the machine counts)"
    );
    println!(
        "  events lost {lost_total}; nginx-side exchanges rebuilt {server_exchanges} of {traced_requests} requests (wrk counts completed requests only)"
    );
    println!("  peak RSS of tracer + pipeline {} KiB", peak_rss_kib());
}
