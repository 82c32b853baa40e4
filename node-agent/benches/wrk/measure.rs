//! Figures the tracer bench reads while it runs: the agent's `/metrics`,
//! CPU time (the agent's and the whole machine's) and RSS from /proc, and the BPF programs' run counts and run
//! time from the kernel (by id, with BPF stats enabled by the bench). It
//! reads only; it loads, attaches and starts nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bpfleet_testsupport::http::get;
use bpfleet_testsupport::metrics::{parse, sum};

use crate::PROGRAM;

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The agent's `/metrics`: sum of the samples of `name` whose labels
/// contain `program="http-tracer"`.
pub fn metric(port: u16, name: &str) -> f64 {
    let (_, text) = get(port, "/metrics");
    sum(&parse(&text), name, &[("program", PROGRAM)])
}

/// (utime + stime) in seconds of `/proc/<pid>/stat` or a task's stat.
pub fn cpu_seconds(stat: &Path) -> f64 {
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

pub use bpfleet_testsupport::machine_cpu_seconds;

/// The stat file of the agent's reader thread (named `http-reader-...`).
pub fn reader_task(pid: u32) -> PathBuf {
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.starts_with("http-reader") {
            return e.path().join("stat");
        }
    }
    panic!("no http-reader thread in agent {pid}");
}

pub fn rss_kib(pid: u32, field: &str) -> u64 {
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
/// Resets the process's peak RSS (VmHWM) to its current RSS, so that a
/// mode's peak is its own and not one an earlier mode left in the same
/// agent process (`clear_refs` value 5).
pub fn reset_peak_rss(pid: u32) {
    if let Err(e) = std::fs::write(format!("/proc/{pid}/clear_refs"), "5") {
        println!("    cannot reset the agent's peak RSS: {e}");
    }
}

pub fn with_peak_rss<T>(pid: u32, f: impl FnOnce() -> T) -> (T, u64) {
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
pub fn prog_stats(ids: &[u32]) -> Vec<(u32, String, u64, u64)> {
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
pub fn run_stats(ids: &[u32]) -> (u64, u64) {
    prog_stats(ids)
        .iter()
        .fold((0, 0), |(c, n), (_, _, c1, n1)| (c + c1, n + n1))
}

/// Kernel id of the program pinned at `pin`.
pub fn pinned_prog_id(pin: &Path) -> u32 {
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

pub fn prog_exists(id: u32) -> bool {
    // SAFETY: as in run_stats.
    unsafe {
        let fd = libbpf_sys::bpf_prog_get_fd_by_id(id);
        if fd >= 0 {
            libc::close(fd);
        }
        fd >= 0
    }
}
