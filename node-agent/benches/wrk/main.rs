//! The HTTP tracer's cost and capacity as bpfleet runs it: the real agent
//! process loads the tracer over gRPC and reads its ring buffer; nginx (one
//! worker) serves loopback traffic in a network namespace of the bench's
//! own. Every round runs, in this order: wrk without the tracer (the
//! tracer is not loaded), then load the tracer, wrk again, a fixed-rate
//! run, unload. Both ends of every request (wrk or the paced client, and
//! nginx) are traced: the port filter holds nginx's port.
//!
//! Run as root: `scripts/bench-tracer.sh` (builds the release agent, then
//! runs this with `cargo bench -p bpfleet-agent --bench wrk`). Settings by
//! environment: `BENCH_ROUNDS` (5), `BENCH_SECONDS` per wrk run (5),
//! `BENCH_CONNECTIONS` (32), `BENCH_RATE` requests/s of the fixed-rate run
//! (50000), `BENCH_RATE_SECONDS` (5), `BENCH_RATE_THREADS` (16),
//! `BENCH_AGENT` (the agent binary; default the `bpfleet-agent` Cargo
//! built with this bench).
//!
//! Reported, median and min-max over the rounds:
//! - requests/s without and with the tracer, and their ratio per round;
//! - BPF run time per request: run_time_ns of the tracer's programs (the
//!   ids the agent's Load returned) over wrk's completed requests, BPF
//!   stats enabled by this process; also with the background (the same
//!   programs' run time per second while idle, from the rest of the
//!   machine) subtracted;
//! - at the fixed rate: the rate held, events lost (the kernel's
//!   `http_lost`), exchanges the agent rebuilt against 2 x requests;
//! - events the agent's reader thread handled per second of its own CPU
//!   time (per core), and per second of the whole agent's CPU time;
//! - the agent's peak RSS during the loaded runs.
//!
//! Nothing stays behind: the tracer is unloaded over gRPC, the agent and
//! nginx are killed, the pin root, scratch dir and namespace removed (also
//! on panic), and the bench fails if any of the tracer's program ids still
//! exists at the end.
//!
//! Files: this one sets up, runs the rounds and prints; `clients.rs`
//! drives traffic (wrk, the paced client); `measure.rs` reads the kernel's
//! and /proc's figures. Agent processes, namespaces, ports and the load
//! request come from `bpfleet-testsupport`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod clients;
mod measure;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bpfleet_proto::v1 as pb;
use bpfleet_testsupport::agent::{AgentFiles, AgentProcess};
use bpfleet_testsupport::free_port;
use bpfleet_testsupport::netns::{self, Netns};
use bpfleet_testsupport::request::{load_request, tracepoints};
use bpfleet_tracer::event::config;
use bpfleet_tracer::pinned::Pinned;
use bpfleet_tracer::standalone::enable_stats;
use bpfleet_tracer::{PERSISTENT_MAPS, PROGRAMS};
use clients::{paced, wrk};
use measure::*;

const PROGRAM: &str = "http-tracer";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Everything the bench starts or creates; removed on drop, also on panic:
/// nginx and the agent killed, then the pin root, then (as a field, last)
/// the namespace.
struct Setup {
    pin_root: PathBuf,
    scratch: tempfile::TempDir,
    nginx: Option<Child>,
    agent: Option<AgentProcess>,
    netns: Netns,
}

impl Setup {
    fn netns_path(&self) -> String {
        self.netns.path()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(c) = self.nginx.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(self.agent.take());
        // Pinned programs and links go with their pins.
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

fn start_nginx(s: &mut Setup, port: u16) {
    let d = s.scratch.path().display().to_string();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; error_log {d}/error.log; pid {d}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
           server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n"
    );
    let conf_path = s.scratch.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    // nsenter execs nginx: the child is nginx itself.
    let child = Command::new("nsenter")
        .args([
            &format!("--net={}", s.netns_path()),
            "nginx",
            "-c",
            &conf_path.to_string_lossy(),
            "-p",
            &d,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx runs (apt-get install nginx-light)");
    s.nginx = Some(child);
    let ns = s.netns_path();
    let up = std::thread::spawn(move || {
        netns::enter(&ns);
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    });
    assert!(up.join().unwrap(), "nginx did not start; see {d}/error.log");
}

fn start_agent(s: &mut Setup, bin: &Path, metrics_port: u16) -> PathBuf {
    let files = AgentFiles::new(&s.pin_root, s.scratch.path());
    let metrics = format!("127.0.0.1:{metrics_port}");
    let agent = AgentProcess::start(
        bin,
        &files,
        None,
        &["--metrics-listen", &metrics, "--allow-unsigned"],
        &[("RUST_LOG", "warn")],
    );
    s.agent = Some(agent);
    files.socket
}

type Client = pb::agent_client::AgentClient<tonic::transport::Channel>;

/// Loads and activates the tracer for nginx's port; returns the ids of
/// every program it runs as: the revision's own, and what its hooks' links
/// run (the agent's dispatchers on tracepoints, which tail-call the
/// revision: tail-called programs get no run time of their own, the
/// dispatcher's covers both).
async fn load_tracer(
    c: &mut Client,
    port: u16,
    pin_dir: &Path,
) -> (Vec<u32>, BTreeMap<u32, String>) {
    let req = load_request(
        PROGRAM,
        "r1",
        bpfleet_bpf::HTTP_TRACER,
        tracepoints(&PROGRAMS),
        &PERSISTENT_MAPS,
    );
    let r = c.load(req).await.unwrap().into_inner();
    let rev = r.revision.unwrap();
    let mut ids = rev.prog_ids;
    let cfg = |map: &str, key: Vec<u8>, value: Vec<u8>| pb::UpdateConfigRequest {
        program: PROGRAM.into(),
        map: map.into(),
        entries: vec![pb::ConfigEntry { key, value }],
        replace: false,
        namespaces: None,
    };
    c.update_config(cfg("bpfleet_ports", port.to_ne_bytes().to_vec(), vec![1]))
        .await
        .unwrap();
    c.update_config(cfg(
        "",
        config::PORT_FILTER.to_ne_bytes().to_vec(),
        1u64.to_ne_bytes().to_vec(),
    ))
    .await
    .unwrap();
    c.activate(pb::ActivateRequest {
        program: PROGRAM.into(),
        revision: "r1".into(),
    })
    .await
    .unwrap();
    // The agent pins each hook's dispatcher as <program>/_disp_<entry>.
    let mut labels = BTreeMap::new();
    for e in std::fs::read_dir(pin_dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(entry) = name.strip_prefix("_disp_") else {
            continue;
        };
        let id = pinned_prog_id(&e.path());
        if !ids.contains(&id) {
            ids.push(id);
            labels.insert(id, format!("{entry} (dispatcher)"));
        }
    }
    (ids, labels)
}

struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(v: &[f64]) -> Spread {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Spread {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

fn line(what: &str, v: &[f64], unit: &str, digits: usize) {
    let s = spread(v);
    println!(
        "  {what:<44} median {:>10.digits$} {unit} (min {:.digits$}, max {:.digits$}, {} rounds)",
        s.median,
        s.min,
        s.max,
        v.len()
    );
}

#[derive(Default)]
struct Figures {
    base_rps: Vec<f64>,
    traced_rps: Vec<f64>,
    ratio: Vec<f64>,
    ns_per_req: Vec<f64>,
    ns_per_req_net: Vec<f64>,
    runs_per_req: Vec<f64>,
    wrk_lost: Vec<f64>,
    rate_held: Vec<f64>,
    rate_lost: Vec<f64>,
    rate_rebuilt: Vec<f64>,
    rate_late: Vec<f64>,
    events_per_reader_core: Vec<f64>,
    events_per_agent_core: Vec<f64>,
    rss_mib: Vec<f64>,
}

fn main() {
    let rounds = env("BENCH_ROUNDS", 5).max(1);
    let secs = env("BENCH_SECONDS", 5);
    let conns = env("BENCH_CONNECTIONS", 32);
    let rate = env("BENCH_RATE", 50_000);
    let rate_secs = env("BENCH_RATE_SECONDS", 5);
    let rate_threads = env("BENCH_RATE_THREADS", 16);
    let agent_bin = std::env::var_os("BENCH_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bpfleet-agent")));

    let tag = std::process::id();
    let mut setup = Setup {
        pin_root: PathBuf::from(format!("/sys/fs/bpf/bpfleet-bench-{tag}")),
        scratch: tempfile::tempdir().unwrap(),
        nginx: None,
        agent: None,
        netns: Netns::new("bench"),
    };
    std::fs::create_dir_all(&setup.pin_root).unwrap();
    let ns = setup.netns_path();
    let port = 8080;
    start_nginx(&mut setup, port);
    let mport = free_port();
    let socket = start_agent(&mut setup, &agent_bin, mport);
    let agent_pid = setup.agent.as_ref().unwrap().pid();
    let _stats = enable_stats().expect("BPF stats (run as root)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = rt
        .block_on(bpfleet_agent::cli::connect_unix(socket))
        .unwrap();
    let lost_pin = setup.pin_root.join(PROGRAM).join("_map_http_lost");
    let events_pin = setup.pin_root.join(PROGRAM).join("_map_http_events");

    let load_before = loadavg();
    wrk(&ns, port, 1, conns); // warm-up
    let mut fig = Figures::default();
    let mut all_ids = BTreeSet::new();
    for round in 0..rounds {
        // Without the tracer: nothing of it is loaded.
        let (base_rps, _) = wrk(&ns, port, secs, conns);

        let (ids, labels) = rt.block_on(load_tracer(
            &mut client,
            port,
            &setup.pin_root.join(PROGRAM),
        ));
        all_ids.extend(ids.iter().copied());
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(mport, "bpfleet_tracer_reader_up") < 1.0 {
            assert!(Instant::now() < deadline, "the agent started no reader");
            std::thread::sleep(Duration::from_millis(50));
        }
        let pinned = Pinned::open(&events_pin, &lost_pin).unwrap();
        // Background: what the rest of the machine makes the programs run.
        let (_, bg0) = run_stats(&ids);
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let (_, bg1) = run_stats(&ids);
        let bg_ns_per_s = (bg1 - bg0) as f64 / t.elapsed().as_secs_f64();

        let reader = reader_task(agent_pid);
        let agent_stat = PathBuf::from(format!("/proc/{agent_pid}/stat"));
        let ev0 = metric(mport, "bpfleet_tracer_events_total");
        let (rcpu0, acpu0) = (cpu_seconds(&reader), cpu_seconds(&agent_stat));
        let lost0 = pinned.lost().unwrap();
        let per_prog0 = prog_stats(&ids);
        let (c0, ns0) = run_stats(&ids);
        let t = Instant::now();
        let ((traced_rps, n), rss_wrk) = with_peak_rss(agent_pid, || wrk(&ns, port, secs, conns));
        let wrk_secs = t.elapsed().as_secs_f64();
        let (c1, ns1) = run_stats(&ids);
        let per_prog1 = prog_stats(&ids);
        let rss_parts = ["RssAnon:", "RssFile:", "RssShmem:"].map(|f| rss_kib(agent_pid, f));
        std::thread::sleep(Duration::from_millis(1500)); // the reader drains
        let ev1 = metric(mport, "bpfleet_tracer_events_total");
        let (rcpu1, acpu1) = (cpu_seconds(&reader), cpu_seconds(&agent_stat));
        let lost1 = pinned.lost().unwrap();

        // Fixed rate.
        let req0 = metric(mport, "bpfleet_http_requests_total");
        let ((done, elapsed, late), rss_rate) = with_peak_rss(agent_pid, || {
            paced(&ns, port, rate, rate_secs, rate_threads)
        });
        std::thread::sleep(Duration::from_millis(1500));
        let lost2 = pinned.lost().unwrap();
        let req1 = metric(mport, "bpfleet_http_requests_total");
        let hwm = rss_kib(agent_pid, "VmHWM:");
        drop(pinned);

        let r = rt
            .block_on(client.unload(pb::UnloadRequest {
                program: PROGRAM.into(),
                revision: String::new(),
            }))
            .unwrap();
        assert!(
            !r.into_inner().removed_pins.is_empty(),
            "unload removed nothing"
        );
        for id in &ids {
            let deadline = Instant::now() + Duration::from_secs(5);
            while prog_exists(*id) {
                assert!(
                    Instant::now() < deadline,
                    "program {id} still loaded after Unload"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        let ns_req = (ns1 - ns0) as f64 / n as f64;
        let ns_req_net = ((ns1 - ns0) as f64 - bg_ns_per_s * wrk_secs).max(0.0) / n as f64;
        let rate_held = done as f64 / elapsed;
        let rebuilt = (req1 - req0) / (2.0 * done as f64);
        let ev_reader = (ev1 - ev0) / (rcpu1 - rcpu0).max(0.01);
        let ev_agent = (ev1 - ev0) / (acpu1 - acpu0).max(0.01);
        let rss = rss_wrk.max(rss_rate).max(hwm) as f64 / 1024.0;
        println!(
            "round {round}: baseline {base_rps:.0} req/s, traced {traced_rps:.0} req/s (ratio {:.3}); \
             BPF {ns_req:.0} ns/request ({ns_req_net:.0} without background {bg_ns_per_s:.0} ns/s), {:.1} runs/request; \
             wrk lost {}; fixed rate {rate_held:.0} req/s held, {} lost, {:.4} of 2x{done} exchanges rebuilt, {late} answers >1 ms late; \
             reader {ev_reader:.0} events/CPU-s, agent {ev_agent:.0} events/CPU-s; agent RSS peak {rss:.1} MiB",
            traced_rps / base_rps,
            (c1 - c0) as f64 / n as f64,
            lost1 - lost0,
            lost2 - lost1,
            rebuilt,
        );
        if round == 0 {
            // Where the BPF time goes (programs that ran during wrk).
            let mut parts: Vec<String> = per_prog1
                .iter()
                .zip(&per_prog0)
                .filter(|((_, _, c1, _), (_, _, c0, _))| c1 > c0)
                .map(|((id, name, c1, n1), (_, _, c0, n0))| {
                    let name = labels.get(id).unwrap_or(name);
                    format!(
                        "{name} {:.1}/req {:.0} ns/run",
                        (c1 - c0) as f64 / n as f64,
                        (n1 - n0) as f64 / (c1 - c0) as f64
                    )
                })
                .collect();
            parts.sort();
            println!("  BPF programs during wrk: {}", parts.join("; "));
            println!(
                "  agent RSS at the end of wrk: anon {} KiB, file {} KiB, shmem {} KiB (the ring buffer's pages count as shmem)",
                rss_parts[0], rss_parts[1], rss_parts[2]
            );
        }
        fig.base_rps.push(base_rps);
        fig.traced_rps.push(traced_rps);
        fig.ratio.push(traced_rps / base_rps);
        fig.ns_per_req.push(ns_req);
        fig.ns_per_req_net.push(ns_req_net);
        fig.runs_per_req.push((c1 - c0) as f64 / n as f64);
        fig.wrk_lost.push((lost1 - lost0) as f64);
        fig.rate_held.push(rate_held);
        fig.rate_lost.push((lost2 - lost1) as f64);
        fig.rate_rebuilt.push(rebuilt);
        fig.rate_late.push(late as f64);
        fig.events_per_reader_core.push(ev_reader);
        fig.events_per_agent_core.push(ev_agent);
        fig.rss_mib.push(rss);
    }
    drop(client);
    drop(rt);
    let (netns_path, pin_root) = (PathBuf::from(setup.netns_path()), setup.pin_root.clone());
    drop(setup);

    println!(
        "load average (1 5 15 min) before {load_before}, after {}; other work on the machine shows in the baseline's spread",
        loadavg()
    );
    println!(
        "nginx (1 worker) in a namespace of its own; wrk -t1 -c{conns} -d{secs}s; fixed rate {rate} req/s for {rate_secs} s on {rate_threads} keep-alive connections; {rounds} rounds, each: baseline, load tracer in the agent, traced, fixed rate, unload"
    );
    line("baseline requests/s", &fig.base_rps, "", 0);
    line("traced requests/s", &fig.traced_rps, "", 0);
    line(
        "throughput ratio traced/baseline (goal >= 0.97)",
        &fig.ratio,
        "",
        3,
    );
    line(
        "BPF run time per request (goal <= 300)",
        &fig.ns_per_req,
        "ns",
        0,
    );
    line(
        "  same, background subtracted",
        &fig.ns_per_req_net,
        "ns",
        0,
    );
    line("BPF program runs per request", &fig.runs_per_req, "", 1);
    line(
        "events lost under wrk (no rate limit)",
        &fig.wrk_lost,
        "",
        0,
    );
    line("fixed-rate requests/s held", &fig.rate_held, "", 0);
    line(
        "events lost at the fixed rate (goal 0)",
        &fig.rate_lost,
        "",
        0,
    );
    line(
        "exchanges rebuilt / (2 x requests), fixed rate",
        &fig.rate_rebuilt,
        "",
        4,
    );
    line(
        "answers more than 1 ms late, fixed rate",
        &fig.rate_late,
        "",
        0,
    );
    line(
        "events per reader CPU-second (goal >= 150K)",
        &fig.events_per_reader_core,
        "",
        0,
    );
    line(
        "events per agent CPU-second",
        &fig.events_per_agent_core,
        "",
        0,
    );
    line(
        "agent peak RSS under load (goal <= 50)",
        &fig.rss_mib,
        "MiB",
        1,
    );

    let left: Vec<u32> = all_ids.into_iter().filter(|id| prog_exists(*id)).collect();
    assert!(left.is_empty(), "tracer programs left loaded: {left:?}");
    assert!(!netns_path.exists(), "{} left behind", netns_path.display());
    assert!(!pin_root.exists(), "{} left behind", pin_root.display());
    println!("  left behind: no tracer program, no pin root, no namespace, no process");
}
