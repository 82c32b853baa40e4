//! Soak of the HTTP tracer as bpfleet runs it: the release agent process
//! with the tracer loaded in two revisions (metrics mode, server end),
//! nginx (one worker, access log on) in a network namespace of the
//! soak's own, an open-loop client at a fixed rate for the whole run,
//! while the soak keeps switching the tracer's revision (Activate r2,
//! Rollback to r1, every `SOAK_SWITCH_SECONDS`) and changing its policy
//! (UpdateConfig of the sampling slot, every `SOAK_CONFIG_SECONDS`,
//! cycling 0, 1 %, 100 %, 10 % of connections sampled: sampled
//! connections send full events through the ring buffer to the agent's
//! reader).
//!
//! Every `SOAK_SAMPLE_SECONDS` it writes a CSV line (time, the agent's
//! VmRSS and open fds and threads from /proc, the tracer's request count
//! and events lost, switches and config changes so far) to
//! `target/soak/soak-<unix time>.csv` (or `SOAK_CSV`). At the end it
//! reports the least-squares slopes of RSS and fds per hour (over the whole
//! run and over its second half), events lost (the kernel's `http_lost`,
//! read from its pin, and the agent's parse errors), and the tracer's
//! request count against nginx's access log and the client's answers:
//! the soak fails when they differ, when an event was lost, or when a
//! switch or config change failed.
//!
//! Run as root: `scripts/soak.sh [MINUTES]` (30 by default). Settings by
//! environment: `SOAK_MINUTES`, `SOAK_RATE` requests/s (1000),
//! `SOAK_THREADS` keep-alive connections at a time (4),
//! `SOAK_PER_CONNECTION` requests before a connection is replaced by a new
//! one (100; sampling is decided per connection, so new connections keep
//! coming under each sampling rate), `SOAK_SWITCH_SECONDS` (10),
//! `SOAK_CONFIG_SECONDS` (7), `SOAK_SAMPLE_SECONDS` (5), `SOAK_NICE` (the
//! client threads' nice value, 10: the agent and nginx keep theirs),
//! `BENCH_AGENT` (the agent binary; default the `bpfleet-agent` Cargo
//! built with this bench).
//!
//! Nothing stays behind: the tracer is unloaded over gRPC, the agent and
//! nginx are killed, the pin root, scratch dir and namespace removed (also
//! on panic: `setup.rs`), and the soak fails if any of the tracer's
//! program ids still exists at the end. Shares the tracer bench's pieces
//! (`../wrk/`): the paced client, the /proc and metrics readers, the setup.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../wrk/clients.rs"]
#[allow(dead_code)]
mod clients;
#[path = "../wrk/measure.rs"]
#[allow(dead_code, unused_imports)]
mod measure;
#[path = "../wrk/setup.rs"]
mod setup;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bpfleet_proto::v1 as pb;
use bpfleet_testsupport::free_port;
use bpfleet_testsupport::http::get;
use bpfleet_testsupport::metrics::{parse, sum};
use bpfleet_testsupport::request::{load_request, tracepoints};
use bpfleet_tracer::event::config;
use bpfleet_tracer::pinned::Pinned;
use bpfleet_tracer::{PERSISTENT_MAPS, PROGRAMS};
use clients::paced_reconnecting;
use measure::{loadavg, metric, pinned_prog_id, prog_exists, rss_kib};
use setup::{Setup, start_agent, start_nginx};

const PROGRAM: &str = "http-tracer";

/// Sampling rates (parts per million of connections) the policy changes
/// cycle through.
const SAMPLING: [u64; 4] = [0, 10_000, 1_000_000, 100_000];

type Client = pb::agent_client::AgentClient<tonic::transport::Channel>;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn threads(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count() as u64)
}

/// Least-squares slope of y over t.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mt, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (t, y)| (a + t / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (t, y)| {
        (num + (t - mt) * (y - my), den + (t - mt) * (t - mt))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

fn config_req(map: &str, key: Vec<u8>, value: Vec<u8>) -> pb::UpdateConfigRequest {
    pb::UpdateConfigRequest {
        program: PROGRAM.into(),
        map: map.into(),
        entries: vec![pb::ConfigEntry { key, value }],
        replace: false,
        namespaces: None,
        tracer_rules: None,
        cpu_budget: None,
        alerts: None,
    }
}

fn slot(slot: u32, value: u64) -> pb::UpdateConfigRequest {
    config_req(
        "",
        slot.to_ne_bytes().to_vec(),
        value.to_ne_bytes().to_vec(),
    )
}

/// Loads r1 and r2 of the tracer, marks nginx's port, activates r1;
/// returns every program id it runs as (the revisions' and the
/// dispatchers').
async fn load_tracer(c: &mut Client, port: u16, pin_dir: &Path) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    for rev in ["r1", "r2"] {
        let req = load_request(
            PROGRAM,
            rev,
            bpfleet_bpf::HTTP_TRACER,
            tracepoints(&PROGRAMS),
            &PERSISTENT_MAPS,
        );
        let r = c.load(req).await.unwrap().into_inner();
        ids.extend(r.revision.unwrap().prog_ids);
    }
    c.update_config(config_req(
        "bpfleet_ports",
        port.to_ne_bytes().to_vec(),
        vec![1],
    ))
    .await
    .unwrap();
    c.update_config(slot(config::PORT_FILTER, 1)).await.unwrap();
    c.activate(pb::ActivateRequest {
        program: PROGRAM.into(),
        revision: "r1".into(),
    })
    .await
    .unwrap();
    for e in std::fs::read_dir(pin_dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("_disp_") {
            ids.insert(pinned_prog_id(&e.path()));
        }
    }
    ids
}

/// The revision List says is active.
async fn active(c: &mut Client) -> String {
    let l = c
        .list(pb::ListRequest {
            program: PROGRAM.into(),
        })
        .await
        .unwrap()
        .into_inner();
    l.programs
        .first()
        .map(|p| p.active_revision.clone())
        .unwrap_or_default()
}

struct Sample {
    t: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    requests: f64,
    lost: u64,
    switches: u64,
    configs: u64,
}

fn main() {
    let minutes = env("SOAK_MINUTES", 30).max(1);
    let rate = env("SOAK_RATE", 1000).max(1);
    let conns = env("SOAK_THREADS", 4).max(1);
    let switch_every = Duration::from_secs(env("SOAK_SWITCH_SECONDS", 10).max(1));
    let config_every = Duration::from_secs(env("SOAK_CONFIG_SECONDS", 7).max(1));
    let sample_every = Duration::from_secs(env("SOAK_SAMPLE_SECONDS", 5).max(1));
    let per_connection = env("SOAK_PER_CONNECTION", 100);
    let nice = i32::try_from(env("SOAK_NICE", 10)).unwrap_or(10);
    let agent_bin = std::env::var_os("BENCH_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bpfleet-agent")));
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let csv_path = std::env::var_os("SOAK_CSV").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/soak")
                .join(format!("soak-{since_epoch}.csv"))
        },
        PathBuf::from,
    );
    std::fs::create_dir_all(csv_path.parent().unwrap()).unwrap();
    let mut csv = std::fs::File::create(&csv_path).unwrap();
    writeln!(
        csv,
        "seconds,rss_kib,fds,threads,tracer_requests,events_lost,switches,config_changes"
    )
    .unwrap();

    let mut setup = Setup::new("soak");
    let ns = setup.netns_path();
    let port = 8080;
    start_nginx(&mut setup, port, true);
    let mport = free_port();
    let socket = start_agent(&mut setup, &agent_bin, mport);
    let pid = setup.agent.as_ref().unwrap().pid();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut c = rt
        .block_on(bpfleet_agent::cli::connect_unix(socket))
        .unwrap();
    let pin_dir = setup.pin_root.join(PROGRAM);
    let ids = rt.block_on(load_tracer(&mut c, port, &pin_dir));
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(mport, "bpfleet_tracer_reader_up") < 1.0 {
        assert!(Instant::now() < deadline, "the agent started no reader");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pinned = Pinned::open(
        &pin_dir.join("_map_http_events"),
        &pin_dir.join("_map_http_lost"),
    )
    .unwrap();
    let load_before = loadavg();
    println!(
        "soak: {minutes} min at {rate} req/s on {conns} keep-alive connections, each replaced after {per_connection} requests (client nice {nice}); \
         switch every {switch_every:?}, sampling changed every {config_every:?}, sampled every {sample_every:?}; \
         agent pid {pid}; samples in {}",
        csv_path.display()
    );

    // The client: its threads inherit this thread's nice value.
    let secs = minutes * 60;
    let client = {
        let ns = ns.clone();
        std::thread::spawn(move || {
            // SAFETY: setpriority on this thread (a tid is a process id
            // for PRIO_PROCESS on Linux); no pointers.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice);
            }
            paced_reconnecting(&ns, port, rate, secs, conns, per_connection)
        })
    };

    let start = Instant::now();
    let (mut switches, mut configs, mut failures) = (0u64, 0u64, Vec::<String>::new());
    let mut samples: Vec<Sample> = Vec::new();
    let (mut next_switch, mut next_config, mut next_sample) =
        (start + switch_every, start + config_every, start);
    let mut take_sample = |switches: u64, configs: u64, csv: &mut std::fs::File| {
        let s = Sample {
            t: start.elapsed().as_secs_f64(),
            rss_kib: rss_kib(pid, "VmRSS:"),
            fds: fds(pid),
            threads: threads(pid),
            requests: metric(mport, "bpfleet_http_requests_total"),
            lost: pinned.lost().unwrap(),
            switches,
            configs,
        };
        writeln!(
            csv,
            "{:.1},{},{},{},{},{},{},{}",
            s.t, s.rss_kib, s.fds, s.threads, s.requests, s.lost, s.switches, s.configs
        )
        .unwrap();
        samples.push(s);
    };
    while !client.is_finished() {
        let now = Instant::now();
        if now >= next_sample {
            take_sample(switches, configs, &mut csv);
            next_sample += sample_every;
        }
        if now >= next_switch {
            let to_r2 = switches.is_multiple_of(2);
            let (want, got) = if to_r2 {
                let r = rt.block_on(c.activate(pb::ActivateRequest {
                    program: PROGRAM.into(),
                    revision: "r2".into(),
                }));
                ("r2", r.map(|r| r.into_inner().active_revision))
            } else {
                let r = rt.block_on(c.rollback(pb::RollbackRequest {
                    program: PROGRAM.into(),
                    to_revision: "r1".into(),
                }));
                ("r1", r.map(|r| r.into_inner().active_revision))
            };
            match got {
                Ok(a) if a == want => {}
                other => failures.push(format!("switch {switches} to {want}: {other:?}")),
            }
            let listed = rt.block_on(active(&mut c));
            if listed != want {
                failures.push(format!("switch {switches}: List says {listed:?} active"));
            }
            switches += 1;
            next_switch += switch_every;
        }
        if now >= next_config {
            let ppm = SAMPLING[(configs % SAMPLING.len() as u64) as usize];
            if let Err(e) = rt.block_on(c.update_config(slot(config::SAMPLE_PPM, ppm))) {
                failures.push(format!("config change {configs} ({ppm} ppm): {e}"));
            }
            configs += 1;
            next_config += config_every;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let p = client.join().unwrap();
    // The agent reads the kernel's counts every second; nginx writes each
    // line when its request is done.
    std::thread::sleep(Duration::from_secs(3));
    take_sample(switches, configs, &mut csv);
    drop(csv);
    let (_, text) = get(mport, "/metrics");
    let m = parse(&text);
    let parse_errors = sum(
        &m,
        "bpfleet_tracer_parse_errors_total",
        &[("program", PROGRAM)],
    );
    let lost_metric = sum(
        &m,
        "bpfleet_tracer_events_lost_total",
        &[("program", PROGRAM)],
    );
    let events = sum(&m, "bpfleet_tracer_events_total", &[("program", PROGRAM)]);
    let traced = samples.last().map_or(0.0, |s| s.requests) as u64;
    let lost = pinned.lost().unwrap();
    drop(pinned);
    let logged = std::fs::read_to_string(setup.access_log())
        .unwrap()
        .lines()
        .count() as u64;
    let load_after = loadavg();

    let r = rt
        .block_on(c.unload(pb::UnloadRequest {
            program: PROGRAM.into(),
            revision: String::new(),
        }))
        .unwrap();
    assert!(
        !r.into_inner().removed_pins.is_empty(),
        "unload removed nothing"
    );
    drop(c);
    drop(rt);
    let (netns_path, pin_root) = (PathBuf::from(setup.netns_path()), setup.pin_root.clone());
    drop(setup);

    let hours = |s: &Sample| s.t / 3600.0;
    let fit = |from: usize, f: &dyn Fn(&Sample) -> f64| {
        slope(
            &samples[from..]
                .iter()
                .map(|s| (hours(s), f(s)))
                .collect::<Vec<_>>(),
        )
    };
    let half = samples.len() / 2;
    let rss_mib = |s: &Sample| s.rss_kib as f64 / 1024.0;
    let fd = |s: &Sample| s.fds as f64;
    let (rss_min, rss_max) = samples.iter().fold((f64::MAX, 0.0f64), |(a, b), s| {
        (a.min(rss_mib(s)), b.max(rss_mib(s)))
    });
    let (fd_min, fd_max) = samples
        .iter()
        .fold((u64::MAX, 0), |(a, b), s| (a.min(s.fds), b.max(s.fds)));
    let first = &samples[0];
    let last = &samples[samples.len() - 1];
    println!(
        "load average (1 5 15 min) before {load_before}, after {load_after}; {} samples over {:.1} min",
        samples.len(),
        last.t / 60.0
    );
    println!(
        "client: {} answers in {:.0} s ({:.0} req/s), p50 {:.0} us, p99 {:.0} us, {} more than 1 ms late",
        p.done,
        p.elapsed,
        p.done as f64 / p.elapsed,
        p.p50_us,
        p.p99_us,
        p.late
    );
    println!(
        "agent RSS: first {:.1} MiB, last {:.1} MiB, min {rss_min:.1}, max {rss_max:.1}; slope {:+.3} MiB/h (second half {:+.3} MiB/h)",
        rss_mib(first),
        rss_mib(last),
        fit(0, &rss_mib),
        fit(half, &rss_mib)
    );
    println!(
        "agent open fds: first {}, last {}, min {fd_min}, max {fd_max}; slope {:+.3} fds/h (second half {:+.3} fds/h); threads first {}, last {}",
        first.fds,
        last.fds,
        fit(0, &fd),
        fit(half, &fd),
        first.threads,
        last.threads
    );
    println!(
        "switches {switches} (Activate r2 / Rollback r1), sampling changes {configs}, failed {}",
        failures.len()
    );
    println!(
        "events lost: kernel http_lost {lost} (agent's metric {lost_metric}); parse errors {parse_errors}; events read {events}"
    );
    println!(
        "requests: tracer {traced}, nginx access log {logged}, client {}",
        p.done
    );
    for f in &failures {
        println!("  failed: {f}");
    }

    // The kernel frees programs after their last link and pin, a moment
    // later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ids.iter().any(|id| prog_exists(*id)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = ids.into_iter().filter(|id| prog_exists(*id)).collect();
    assert!(left.is_empty(), "tracer programs left loaded: {left:?}");
    assert!(!netns_path.exists(), "{} left behind", netns_path.display());
    assert!(!pin_root.exists(), "{} left behind", pin_root.display());
    println!("left behind: no tracer program, no pin root, no namespace, no process");
    assert!(failures.is_empty(), "switches or config changes failed");
    assert_eq!(lost, 0, "events lost at {rate} req/s");
    assert_eq!(parse_errors, 0.0, "parse errors");
    assert_eq!(
        (traced, p.done),
        (logged, logged),
        "tracer and client against nginx's access log"
    );
    assert!(switches > 0 && configs > 0, "nothing was switched");
}
