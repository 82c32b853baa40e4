//! The HTTP tracer's cost and capacity as bpfleet runs it: the real agent
//! process loads the tracer over gRPC and reads its counts and ring buffer;
//! nginx (one worker) serves loopback traffic in a network namespace of the
//! bench's own, with nginx's port in the port filter.
//!
//! Every round runs, in this order: without the tracer (nothing loaded) wrk
//! at saturation and the fixed-rate client; then for each mode - the
//! floor (the tracer's hooks with empty programs, through the same
//! dispatchers), metrics mode on the server end (the tracer's default),
//! events for every
//! exchange on both ends (the tracer before metrics mode), metrics mode on
//! both ends - load the tracer in that mode, wrk, the fixed rate, the high
//! fixed rate, unload. So every mode is compared with the same round's
//! untraced run.
//!
//! Run as root: `scripts/bench-tracer.sh` (builds the release agent, then
//! runs this with `cargo bench -p bpfleet-agent --bench wrk`). Settings by
//! environment: `BENCH_ROUNDS` (5), `BENCH_SECONDS` per wrk run (5),
//! `BENCH_CONNECTIONS` (32), `BENCH_RATE` requests/s of the fixed-rate run
//! (20000), `BENCH_HIGH_RATE` (50000, for events lost),
//! `BENCH_RATE_SECONDS` (5), `BENCH_RATE_THREADS` (16), `BENCH_MODES`
//! (`floor,metrics-server,events-both,metrics-both`), `BENCH_AGENT` (the agent
//! binary; default the `bpfleet-agent` Cargo built with this bench),
//! `BENCH_PERF` (a directory: profile each mode once with perf, see
//! `profile.rs`).
//!
//! Reported per mode, median and min-max over the rounds:
//! - requests/s with the tracer, and the ratio to the round's untraced run;
//! - BPF run time per request: run_time_ns of the tracer's programs (the
//!   ids the agent's Load returned, and the dispatchers) over wrk's
//!   completed requests, BPF stats enabled by this process;
//! - at the fixed rate: total CPU added per request (the whole machine's
//!   busy CPU from /proc/stat over the run, traced minus the round's
//!   untraced run, over the requests answered: BPF, agent, everything;
//!   noisy on a VM, so also its two known parts measured directly: the
//!   programs' run time and the agent's own CPU per request), and the
//!   client's latency p50 and p99 traced over untraced;
//! - at the high fixed rate: events lost (the kernel's `http_lost`) and the
//!   exchanges the agent reported against the requests (x2 with both ends);
//! - the agent's peak RSS during the mode's traffic (the peak is reset
//!   after each load: the same agent process runs every mode).
//!
//! Nothing stays behind: the tracer is unloaded over gRPC, the agent and
//! nginx are killed, the pin root, scratch dir and namespace removed (also
//! on panic), and the bench fails if any of the tracer's program ids still
//! exists at the end.
//!
//! Files: this one sets up, runs the rounds and prints; `clients.rs`
//! drives traffic (wrk, the paced client); `measure.rs` reads the kernel's
//! and /proc's figures; `setup.rs` starts nginx and the agent in a
//! namespace and removes them. Agent processes, namespaces, ports and the load
//! request come from `bpfleet-testsupport`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod clients;
mod measure;
mod profile;
mod setup;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bpfleet_agent::agent::request::{ports_write, slots_write};
use bpfleet_proto::v1 as pb;
use bpfleet_testsupport::free_port;
use bpfleet_testsupport::request::{load_request, tracepoints};
use bpfleet_tracer::event::config;
use bpfleet_tracer::pinned::Pinned;
use bpfleet_tracer::standalone::enable_stats;
use bpfleet_tracer::{PERSISTENT_MAPS, PROGRAMS};
use clients::{paced, wrk};
use measure::*;
use setup::{Setup, start_agent, start_nginx};

const PROGRAM: &str = "http-tracer";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
    mode: Mode,
) -> (Vec<u32>, BTreeMap<u32, String>) {
    let (object, shared): (&[u8], &[&str]) = if mode == Mode::Floor {
        (bpfleet_bpf::HTTP_TRACER_FLOOR, &[])
    } else {
        (bpfleet_bpf::HTTP_TRACER, &PERSISTENT_MAPS)
    };
    let req = load_request(PROGRAM, "r1", object, tracepoints(&PROGRAMS), shared);
    let r = c.load(req).await.unwrap().into_inner();
    let rev = r.revision.unwrap();
    let mut ids = rev.prog_ids;
    if mode != Mode::Floor {
        c.update_config(ports_write(PROGRAM, &[port], false))
            .await
            .unwrap();
    }
    let slots = mode.slots();
    if !slots.is_empty() {
        c.update_config(slots_write(PROGRAM, &slots)).await.unwrap();
    }
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

/// How the tracer is configured for a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// The tracer's hooks with empty programs (`HTTP_TRACER_FLOOR`), through
    /// the same dispatchers: the floor of what a hook costs.
    Floor,
    /// Metrics mode, server end: the tracer's default.
    MetricsServer,
    /// Every read and write as an event, both ends: the tracer before
    /// metrics mode.
    EventsBoth,
    /// Metrics mode, both ends.
    MetricsBoth,
}

impl Mode {
    fn parse(s: &str) -> Self {
        match s.trim() {
            "floor" => Mode::Floor,
            "metrics-server" => Mode::MetricsServer,
            "events-both" => Mode::EventsBoth,
            "metrics-both" => Mode::MetricsBoth,
            other => panic!(
                "BENCH_MODES: unknown mode {other:?} (floor, metrics-server, events-both, metrics-both)"
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mode::Floor => "floor",
            Mode::MetricsServer => "metrics-server",
            Mode::EventsBoth => "events-both",
            Mode::MetricsBoth => "metrics-both",
        }
    }

    /// The `bpfleet_config` slots written before Activate.
    fn slots(self) -> Vec<(u32, u64)> {
        let mut v = vec![(config::PORT_FILTER, 1)];
        match self {
            Mode::Floor => v.clear(),
            Mode::MetricsServer => {}
            Mode::EventsBoth => {
                v.push((config::EVENTS, 1));
                v.push((config::ENDS, config::ENDS_BOTH));
            }
            Mode::MetricsBoth => v.push((config::ENDS, config::ENDS_BOTH)),
        }
        v
    }

    /// Exchanges reported per request.
    fn ends(self) -> f64 {
        if self == Mode::MetricsServer {
            1.0
        } else {
            2.0
        }
    }
}

#[derive(Default)]
struct Figures {
    traced_rps: Vec<f64>,
    ratio: Vec<f64>,
    ns_per_req: Vec<f64>,
    runs_per_req: Vec<f64>,
    wrk_lost: Vec<f64>,
    cpu_ns_per_req: Vec<f64>,
    bpf_rate_ns_per_req: Vec<f64>,
    agent_ns_per_req: Vec<f64>,
    p50_ratio: Vec<f64>,
    p99_ratio: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    rate_held: Vec<f64>,
    high_held: Vec<f64>,
    high_lost: Vec<f64>,
    high_reported: Vec<f64>,
    rss_mib: Vec<f64>,
}

/// One untraced round: saturation, and the fixed rate's CPU and latency.
struct Untraced {
    rps: f64,
    cpu_per_req: f64,
    p50_us: f64,
    p99_us: f64,
}

fn main() {
    let rounds = env("BENCH_ROUNDS", 5).max(1);
    let secs = env("BENCH_SECONDS", 5);
    let conns = env("BENCH_CONNECTIONS", 32);
    let rate = env("BENCH_RATE", 20_000);
    let high_rate = env("BENCH_HIGH_RATE", 50_000);
    let rate_secs = env("BENCH_RATE_SECONDS", 5);
    let rate_threads = env("BENCH_RATE_THREADS", 16);
    let modes: Vec<Mode> = std::env::var("BENCH_MODES")
        .unwrap_or_else(|_| "floor,metrics-server,events-both,metrics-both".into())
        .split(',')
        .map(Mode::parse)
        .collect();
    let perf_dir = std::env::var_os("BENCH_PERF").map(PathBuf::from);
    if let Some(d) = &perf_dir {
        std::fs::create_dir_all(d).unwrap();
    }
    let agent_bin = std::env::var_os("BENCH_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bpfleet-agent")));

    let mut setup = Setup::new("bench");
    let ns = setup.netns_path();
    let port = 8080;
    start_nginx(&mut setup, port, false);
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
    let agent_stat = PathBuf::from(format!("/proc/{agent_pid}/stat"));

    let load_before = loadavg();
    wrk(&ns, port, 1, conns); // warm-up
    let mut base_rps = Vec::new();
    let mut base_p50 = Vec::new();
    let mut base_p99 = Vec::new();
    let mut figs: BTreeMap<&str, Figures> = BTreeMap::new();
    let mut all_ids = BTreeSet::new();
    for round in 0..rounds {
        // Without the tracer: nothing of it is loaded.
        let (rps, _) = wrk(&ns, port, secs, conns);
        let m0 = machine_cpu_seconds();
        let p = paced(&ns, port, rate, rate_secs, rate_threads);
        let base = Untraced {
            rps,
            cpu_per_req: (machine_cpu_seconds() - m0) / p.done as f64,
            p50_us: p.p50_us,
            p99_us: p.p99_us,
        };
        println!(
            "round {round}: untraced {:.0} req/s; at {rate} req/s: {:.0} ns CPU/request, p50 {:.0} us, p99 {:.0} us",
            base.rps,
            base.cpu_per_req * 1e9,
            base.p50_us,
            base.p99_us
        );
        base_rps.push(base.rps);
        base_p50.push(base.p50_us);
        base_p99.push(base.p99_us);

        for &mode in &modes {
            let (ids, labels) = rt.block_on(load_tracer(
                &mut client,
                port,
                &setup.pin_root.join(PROGRAM),
                mode,
            ));
            all_ids.extend(ids.iter().copied());
            let tracer = mode != Mode::Floor;
            let deadline = Instant::now() + Duration::from_secs(10);
            while tracer && metric(mport, "bpfleet_tracer_reader_up") < 1.0 {
                assert!(Instant::now() < deadline, "the agent started no reader");
                std::thread::sleep(Duration::from_millis(50));
            }
            // The agent process stays across modes: its peak RSS starts
            // again here (after the load, before the mode's traffic).
            reset_peak_rss(agent_pid);
            let pinned = tracer.then(|| Pinned::open(&events_pin, &lost_pin).unwrap());
            let lost = || pinned.as_ref().map_or(0, |p| p.lost().unwrap());

            // Saturation.
            let lost0 = lost();
            let per_prog0 = prog_stats(&ids);
            let (c0, ns0) = run_stats(&ids);
            let ((traced_rps, n), rss_wrk) =
                with_peak_rss(agent_pid, || wrk(&ns, port, secs, conns));
            let (c1, ns1) = run_stats(&ids);
            let per_prog1 = prog_stats(&ids);
            std::thread::sleep(Duration::from_millis(1500)); // the reader drains
            let lost1 = lost();

            // The fixed rate: the whole machine's CPU, the agent's, latency.
            let reader = tracer.then(|| reader_task(agent_pid));
            let reader_cpu = || reader.as_deref().map_or(0.0, cpu_seconds);
            let (_, bpf0) = run_stats(&ids);
            let (m0, a0, r0) = (
                machine_cpu_seconds(),
                cpu_seconds(&agent_stat),
                reader_cpu(),
            );
            let (p, rss_rate) = with_peak_rss(agent_pid, || {
                paced(&ns, port, rate, rate_secs, rate_threads)
            });
            let (m1, a1, r1) = (
                machine_cpu_seconds(),
                cpu_seconds(&agent_stat),
                reader_cpu(),
            );
            let (_, bpf1) = run_stats(&ids);
            let cpu_ns = ((m1 - m0) / p.done as f64 - base.cpu_per_req) * 1e9;
            let bpf_rate_ns = (bpf1 - bpf0) as f64 / p.done as f64;
            let agent_ns = (a1 - a0) / p.done as f64 * 1e9;
            let reader_ns = (r1 - r0) / p.done as f64 * 1e9;
            std::thread::sleep(Duration::from_millis(1500));

            // Where the time goes (BENCH_PERF): one more fixed-rate run,
            // under perf.
            if let (0, Some(dir)) = (round, perf_dir.as_ref()) {
                let out = dir.join(format!("{}.perf.data", mode.name()));
                let (p, prof) =
                    profile::record(&out, || paced(&ns, port, rate, rate_secs, rate_threads));
                println!(
                    "    profiled run at {rate} req/s ({}): {} requests",
                    out.display(),
                    p.done
                );
                if let Some(prof) = prof {
                    profile::print(&prof, p.done);
                }
                std::thread::sleep(Duration::from_millis(1500));
            }

            // The high fixed rate: events lost, exchanges reported.
            let req0 = metric(mport, "bpfleet_http_requests_total");
            let lost2 = lost();
            let (h, rss_high) = with_peak_rss(agent_pid, || {
                paced(&ns, port, high_rate, rate_secs, rate_threads)
            });
            std::thread::sleep(Duration::from_millis(2500)); // counts are read every second
            let lost3 = lost();
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
            let runs = (c1 - c0) as f64 / n as f64;
            let reported = (req1 - req0) / (mode.ends() * h.done as f64);
            let rss = rss_wrk.max(rss_rate).max(rss_high).max(hwm) as f64 / 1024.0;
            println!(
                "  {}: {traced_rps:.0} req/s (ratio {:.3}), BPF {ns_req:.0} ns/request over {runs:.1} runs, {} lost under wrk; \
                 at {rate} req/s: +{cpu_ns:.0} ns CPU/request (BPF {bpf_rate_ns:.0}, agent {agent_ns:.0}, its reader {reader_ns:.0}), p50 {:.0} us, p99 {:.0} us, {} answers >1 ms late ({:.0} held); \
                 at {high_rate} req/s: {:.0} held, {} lost, {:.4} of the exchanges reported; agent RSS peak {rss:.1} MiB",
                mode.name(),
                traced_rps / base.rps,
                lost1 - lost0,
                p.p50_us,
                p.p99_us,
                p.late,
                p.done as f64 / p.elapsed,
                h.done as f64 / h.elapsed,
                lost3 - lost2,
                reported,
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
                            "{name} {:.2}/req {:.0} ns/run",
                            (c1 - c0) as f64 / n as f64,
                            (n1 - n0) as f64 / (c1 - c0) as f64
                        )
                    })
                    .collect();
                parts.sort();
                println!("    BPF programs during wrk: {}", parts.join("; "));
            }
            let f = figs.entry(mode.name()).or_default();
            f.traced_rps.push(traced_rps);
            f.ratio.push(traced_rps / base.rps);
            f.ns_per_req.push(ns_req);
            f.runs_per_req.push(runs);
            f.wrk_lost.push((lost1 - lost0) as f64);
            f.cpu_ns_per_req.push(cpu_ns);
            f.bpf_rate_ns_per_req.push(bpf_rate_ns);
            f.agent_ns_per_req.push(agent_ns);
            f.p50_us.push(p.p50_us);
            f.p99_us.push(p.p99_us);
            f.p50_ratio.push(p.p50_us / base.p50_us.max(1.0));
            f.p99_ratio.push(p.p99_us / base.p99_us.max(1.0));
            f.rate_held.push(p.done as f64 / p.elapsed);
            f.high_held.push(h.done as f64 / h.elapsed);
            f.high_lost.push((lost3 - lost2) as f64);
            f.high_reported.push(reported);
            f.rss_mib.push(rss);
        }
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
        "nginx (1 worker) in a namespace of its own; wrk -t1 -c{conns} -d{secs}s; fixed rates {rate} and {high_rate} req/s for {rate_secs} s on {rate_threads} keep-alive connections; {rounds} rounds"
    );
    println!("untraced:");
    line("requests/s", &base_rps, "", 0);
    line(&format!("latency p50 at {rate} req/s"), &base_p50, "us", 0);
    line(&format!("latency p99 at {rate} req/s"), &base_p99, "us", 0);
    for mode in &modes {
        let f = &figs[mode.name()];
        println!("{}:", mode.name());
        line("requests/s", &f.traced_rps, "", 0);
        line("throughput ratio traced/untraced", &f.ratio, "", 3);
        line("BPF run time per request", &f.ns_per_req, "ns", 0);
        line("BPF program runs per request", &f.runs_per_req, "", 1);
        line("events lost under wrk", &f.wrk_lost, "", 0);
        line(
            &format!("CPU added per request at {rate} req/s"),
            &f.cpu_ns_per_req,
            "ns",
            0,
        );
        line(
            &format!("BPF run time per request at {rate} req/s"),
            &f.bpf_rate_ns_per_req,
            "ns",
            0,
        );
        line(
            &format!("agent CPU per request at {rate} req/s"),
            &f.agent_ns_per_req,
            "ns",
            0,
        );
        line("latency p50, traced/untraced", &f.p50_ratio, "", 2);
        line("latency p99, traced/untraced", &f.p99_ratio, "", 2);
        line("latency p99", &f.p99_us, "us", 0);
        line(&format!("held at {rate} req/s"), &f.rate_held, "", 0);
        line(&format!("held at {high_rate} req/s"), &f.high_held, "", 0);
        line(
            &format!("events lost at {high_rate} req/s"),
            &f.high_lost,
            "",
            0,
        );
        line("exchanges reported / expected", &f.high_reported, "", 4);
        line("agent peak RSS", &f.rss_mib, "MiB", 1);
    }

    let left: Vec<u32> = all_ids.into_iter().filter(|id| prog_exists(*id)).collect();
    assert!(left.is_empty(), "tracer programs left loaded: {left:?}");
    assert!(!netns_path.exists(), "{} left behind", netns_path.display());
    assert!(!pin_root.exists(), "{} left behind", pin_root.display());
    println!("  left behind: no tracer program, no pin root, no namespace, no process");
}
