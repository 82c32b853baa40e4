//! The HTTP tracer's cost and capacity as bpfleet runs it: the real agent
//! process loads the tracer over gRPC and reads its ring buffer; nginx (one
//! worker) serves loopback traffic in a network namespace of the bench's
//! own. Every round runs, in this order: wrk without the tracer (the
//! tracer is not loaded), then load the tracer, wrk again, a fixed-rate
//! run, unload. Both ends of every request (wrk or the paced client, and
//! nginx) are traced: the port filter holds nginx's port.
//!
//! Run as root: `scripts/bench-tracer.sh` (builds the release agent, then
//! runs this with `cargo bench -p bpfleet-tracer --bench wrk`). Settings by
//! environment: `BENCH_ROUNDS` (5), `BENCH_SECONDS` per wrk run (5),
//! `BENCH_CONNECTIONS` (32), `BENCH_RATE` requests/s of the fixed-rate run
//! (50000), `BENCH_RATE_SECONDS` (5), `BENCH_RATE_THREADS` (16),
//! `BENCH_AGENT` (the agent binary; default `bpfleet-agent` next to this
//! bench's directory in the target dir).
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

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bpfleet_proto::v1::{self as pb, HookKind, load_request::Source};
use bpfleet_tracer::event::config;
use bpfleet_tracer::pinned::Pinned;
use bpfleet_tracer::standalone::enable_stats;
use bpfleet_tracer::{PERSISTENT_MAPS, PROGRAMS};
use sha2::Digest;

const PROGRAM: &str = "http-tracer";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything the bench starts or creates; removed on drop, also on panic.
struct Setup {
    netns: String,
    pin_root: PathBuf,
    scratch: tempfile::TempDir,
    nginx: Option<Child>,
    agent: Option<Child>,
}

impl Setup {
    fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.netns)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        for c in [self.nginx.as_mut(), self.agent.as_mut()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Pinned programs and links go with their pins.
        let _ = std::fs::remove_dir_all(&self.pin_root);
        // `ip netns del` can fail while the namespace's last users are
        // still going away (measured: the name outlived the bench once).
        let path = PathBuf::from(self.netns_path());
        for _ in 0..50 {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns])
                .stderr(Stdio::null())
                .status();
            if !path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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
        enter_netns(&ns);
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

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &str) {
    let f = std::fs::File::open(path).expect("open netns");
    // SAFETY: setns on an fd we own; affects this thread only.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_agent(s: &mut Setup, bin: &Path, metrics_port: u16) -> PathBuf {
    let socket = s.scratch.path().join("agent.sock");
    let sc = s.scratch.path();
    let child = Command::new(bin)
        .args([
            "serve",
            "--pin-root",
            s.pin_root.to_str().unwrap(),
            "--state-file",
            sc.join("state.json").to_str().unwrap(),
            "--audit-log",
            sc.join("audit.jsonl").to_str().unwrap(),
            "--socket",
            socket.to_str().unwrap(),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
            "--allow-unsigned",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (scripts/bench-tracer.sh builds it)", bin.display()));
    s.agent = Some(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "agent socket did not appear");
        std::thread::sleep(Duration::from_millis(20));
    }
    socket
}

/// Runs wrk in the namespace; returns (requests/s, requests).
fn wrk(ns: &str, port: u16, secs: u64, conns: u64) -> (f64, u64) {
    let out = Command::new("nsenter")
        .args([
            &format!("--net={ns}"),
            "wrk",
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

/// Open-loop client at a fixed rate: `threads` keep-alive connections, the
/// k-th request of thread i due at start + (i + k * threads) / rate; a
/// thread behind schedule sends at once (no request is skipped, none sent
/// early). Returns (requests answered, seconds from start to the last
/// answer, answers later than 1 ms after they were due).
fn paced(ns: &str, port: u16, rate: u64, secs: u64, threads: u64) -> (u64, f64, u64) {
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs(secs);
    let done = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (ns, done, late) = (ns.to_string(), done.clone(), late.clone());
            std::thread::spawn(move || {
                enter_netns(&ns);
                // Sleep to the due time, not up to 50 µs past it (the
                // default timer slack).
                // SAFETY: prctl on the calling thread, no pointers.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
                let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                s.set_nodelay(true).unwrap();
                let req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
                let mut buf = [0u8; 4096];
                let mut k = 0u64;
                loop {
                    let due =
                        start + Duration::from_nanos((i + k * threads) * 1_000_000_000 / rate);
                    if due >= end {
                        return Instant::now();
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    s.write_all(req).unwrap();
                    read_response(&mut s, &mut buf);
                    if due.elapsed() > Duration::from_millis(1) {
                        late.fetch_add(1, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                }
            })
        })
        .collect();
    let last = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .max()
        .unwrap();
    (
        done.load(Ordering::Relaxed),
        last.duration_since(start).as_secs_f64(),
        late.load(Ordering::Relaxed),
    )
}

/// Reads one response with a Content-Length body.
fn read_response(s: &mut TcpStream, buf: &mut [u8]) {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).unwrap();
        assert!(n > 0, "nginx closed the connection");
        have += n;
        let Some(head) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("content-length");
        if have >= head + 4 + len {
            assert_eq!(have, head + 4 + len, "one response at a time");
            return;
        }
    }
}

/// The agent's `/metrics`: sum of the samples of `name` whose labels
/// contain `program="http-tracer"`.
fn metric(port: u16, name: &str) -> f64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = series.split_once('{').unwrap_or((series, ""));
            (n == name && labels.contains(&format!("program=\"{PROGRAM}\"")))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// (utime + stime) in seconds of `/proc/<pid>/stat` or a task's stat.
fn cpu_seconds(stat: &Path) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the ")" that closes comm: state is field 3, utime 14.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    // SAFETY: sysconf has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    f.iter().sum::<u64>() as f64 / hz
}

/// The stat file of the agent's reader thread (named `http-reader-...`).
fn reader_task(pid: u32) -> PathBuf {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.starts_with("http-reader") {
            return e.path().join("stat");
        }
    }
    panic!("no http-reader thread in agent {pid}");
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Sets the flag when dropped, also while unwinding.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Highest VmRSS of `pid` seen every 50 ms while `f` runs.
fn with_peak_rss<T>(pid: u32, f: impl FnOnce() -> T) -> (T, u64) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = 0;
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid, "VmRSS:"));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let out = {
            let _stop = SetOnDrop(&stop);
            f()
        };
        (out, sampler.join().unwrap())
    })
}

/// (id, name, run_cnt, run_time_ns) of programs by id; ids that are gone
/// are left out.
fn prog_stats(ids: &[u32]) -> Vec<(u32, String, u64, u64)> {
    let mut out = Vec::new();
    for id in ids {
        // SAFETY: plain syscall wrappers; the fd is closed below.
        unsafe {
            let fd = libbpf_sys::bpf_prog_get_fd_by_id(*id);
            if fd < 0 {
                continue;
            }
            let mut info = libbpf_sys::bpf_prog_info::default();
            let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
            if libbpf_sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) == 0 {
                let name: Vec<u8> = info
                    .name
                    .iter()
                    .take_while(|c| **c != 0)
                    .map(|c| *c as u8)
                    .collect();
                out.push((
                    *id,
                    String::from_utf8_lossy(&name).into_owned(),
                    info.run_cnt,
                    info.run_time_ns,
                ));
            }
            libc::close(fd);
        }
    }
    out
}

/// Total (run_cnt, run_time_ns) of programs by id.
fn run_stats(ids: &[u32]) -> (u64, u64) {
    prog_stats(ids)
        .iter()
        .fold((0, 0), |(c, n), (_, _, c1, n1)| (c + c1, n + n1))
}

/// Kernel id of the program pinned at `pin`.
fn pinned_prog_id(pin: &Path) -> u32 {
    let c = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: plain syscall wrappers on a valid C string and an info struct
    // of the right size; the fd is closed below.
    unsafe {
        let fd = libbpf_sys::bpf_obj_get(c.as_ptr());
        assert!(fd >= 0, "bpf_obj_get {}", pin.display());
        let mut info = libbpf_sys::bpf_prog_info::default();
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        let rc = libbpf_sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len);
        libc::close(fd);
        assert_eq!(rc, 0, "program info of {}", pin.display());
        info.id
    }
}

fn prog_exists(id: u32) -> bool {
    // SAFETY: as in run_stats.
    unsafe {
        let fd = libbpf_sys::bpf_prog_get_fd_by_id(id);
        if fd >= 0 {
            libc::close(fd);
        }
        fd >= 0
    }
}

fn load_request() -> pb::LoadRequest {
    let obj = bpfleet_bpf::HTTP_TRACER;
    pb::LoadRequest {
        program: PROGRAM.into(),
        revision: "r1".into(),
        source: Some(Source::Object(obj.to_vec())),
        sha256: hex::encode(sha2::Sha256::digest(obj)),
        entries: PROGRAMS
            .iter()
            .map(|(name, tp)| pb::ProgramEntry {
                bpf_program: name.to_string(),
                hook: HookKind::Tracepoint as i32,
                target: tp.to_string(),
                pid: 0,
            })
            .collect(),
        persistent_maps: PERSISTENT_MAPS.iter().map(|m| m.to_string()).collect(),
        ..Default::default()
    }
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
    let r = c.load(load_request()).await.unwrap().into_inner();
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
        .unwrap_or_else(|| {
            // target/<profile>/deps/wrk-* -> target/<profile>/bpfleet-agent
            let exe = std::env::current_exe().unwrap();
            exe.parent()
                .and_then(Path::parent)
                .unwrap()
                .join("bpfleet-agent")
        });

    let tag = std::process::id();
    let netns = format!("bpfleet-bench-{tag}");
    let _ = Command::new("ip")
        .args(["netns", "del", &netns])
        .stderr(Stdio::null())
        .status();
    run("ip", &["netns", "add", &netns]);
    let mut setup = Setup {
        netns,
        pin_root: PathBuf::from(format!("/sys/fs/bpf/bpfleet-bench-{tag}")),
        scratch: tempfile::tempdir().unwrap(),
        nginx: None,
        agent: None,
    };
    run(
        "nsenter",
        &[
            &format!("--net={}", setup.netns_path()),
            "ip",
            "link",
            "set",
            "lo",
            "up",
        ],
    );
    std::fs::create_dir_all(&setup.pin_root).unwrap();
    let ns = setup.netns_path();
    let port = 8080;
    start_nginx(&mut setup, port);
    let mport = free_port();
    let socket = start_agent(&mut setup, &agent_bin, mport);
    let agent_pid = setup.agent.as_ref().unwrap().id();
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
