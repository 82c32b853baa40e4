//! Where the BPF time goes, when `BENCH_PERF` names a directory: `perf
//! record` (cpu-clock, call chains, every CPU) during one fixed-rate run
//! per mode in round 0, and a summary of the samples that fell inside a BPF
//! program: per program (the JIT names them `bpf_prog_<tag>_<name>`,
//! global functions such as `parse_request` under their own name), the
//! time in its own instructions and in each kernel function it called (map
//! lookups, `bpf_probe_read_user`'s copy, the clock), in nanoseconds per
//! request. Samples of the syscall tracepoints' own path
//! (`perf_syscall_exit`, `perf_syscall_enter`, `trace_call_bpf`) outside
//! any program are counted apart: that is what a hook costs before its
//! program runs; within it, the kernel's run-time accounting (two
//! `sched_clock` reads per run while BPF stats are on, as the agent keeps
//! them) separately.
//!
//! cpu-clock samples on a timer, so a figure is a share of samples and has
//! the sampling error of its count: the summary prints the counts too.

use std::collections::BTreeMap;

use bpfleet_testsupport::perf::{Profile, Sampled, by_kind, parse};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs `f` under `perf record -a -g`, writing `out`; the profile of the
/// samples, or None (and a line saying why) when perf is missing or fails.
pub fn record<T>(out: &Path, f: impl FnOnce() -> T) -> (T, Option<Profile>) {
    let child = Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "4999",
            "-a",
            "-g",
            "-o",
        ])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        println!("    profile: perf could not be started (apt-get install linux-perf)");
        return (f(), None);
    };
    std::thread::sleep(Duration::from_millis(500)); // perf is recording
    let r = f();
    // perf writes its file on SIGINT.
    // SAFETY: signals the child this function started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    let script = Command::new("perf")
        .args(["script", "-F", "period,ip,sym", "-i"])
        .arg(out)
        .stderr(Stdio::null())
        .output();
    match script {
        Ok(o) if o.status.success() => (r, Some(parse(&String::from_utf8_lossy(&o.stdout)))),
        _ => {
            println!("    profile: perf script failed on {}", out.display());
            (r, None)
        }
    }
}

/// Prints the profile per request: each program's total, then what in it
/// took at least 2 % of it.
pub fn print(p: &Profile, requests: u64) {
    let per = |s: &Sampled| s.ns as f64 / requests.max(1) as f64;
    let mut progs: Vec<(&String, Sampled, &BTreeMap<String, Sampled>)> = p
        .programs
        .iter()
        .map(|(name, parts)| {
            let t = parts.values().fold(Sampled::default(), |a, s| Sampled {
                ns: a.ns + s.ns,
                samples: a.samples + s.samples,
            });
            (name, t, parts)
        })
        .collect();
    progs.sort_by_key(|b| std::cmp::Reverse(b.1.ns));
    let in_bpf: u64 = progs.iter().map(|p| p.1.ns).sum();
    println!(
        "    profile ({} samples): in BPF programs {:.0} ns/request; outside them, the tracepoint path {:.0} ns/request ({} samples) and BPF run-time accounting {:.0} ns/request ({} samples)",
        p.total.samples,
        in_bpf as f64 / requests.max(1) as f64,
        per(&p.hook_path),
        p.hook_path.samples,
        per(&p.run_time_stats),
        p.run_time_stats.samples
    );
    let mut kinds: Vec<(&str, Sampled)> = by_kind(p).into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1.ns));
    let kinds: Vec<String> = kinds
        .iter()
        .map(|(k, s)| format!("{k} {:.0}", per(s)))
        .collect();
    println!("      by kind (ns/request): {}", kinds.join(", "));
    for (name, t, parts) in progs {
        let mut parts: Vec<(&String, &Sampled)> = parts.iter().collect();
        parts.sort_by_key(|b| std::cmp::Reverse(b.1.ns));
        let shown: Vec<String> = parts
            .iter()
            .filter(|(_, s)| s.ns * 50 >= t.ns)
            .map(|(what, s)| format!("{what} {:.0} ({})", per(s), s.samples))
            .collect();
        println!(
            "      {name}: {:.0} ns/request ({} samples): {}",
            per(&t),
            t.samples,
            shown.join(", ")
        );
    }
}
