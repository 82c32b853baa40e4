//! perf call-chain samples grouped by BPF program: the parsing half of
//! the tracer bench's profile (node-agent/benches/wrk/profile.rs), here so
//! it is unit-tested. A sample that has a BPF program's JIT symbol
//! (`bpf_prog_<tag>_<name>`) in its chain is counted for the innermost such
//! program, under the function the sample landed in: `self` for the
//! program's own instructions, else the kernel function it called.

use std::collections::BTreeMap;

/// Sampled time, in nanoseconds, with the number of samples behind it.
#[derive(Default, Clone, Copy)]
pub struct Sampled {
    pub ns: u64,
    pub samples: u64,
}

impl Sampled {
    pub fn add(&mut self, ns: u64) {
        self.ns += ns;
        self.samples += 1;
    }
}

#[derive(Default)]
pub struct Profile {
    /// Program (its JIT symbol without `bpf_prog_<tag>_`) → the function
    /// the sample landed in (`self` for the program's own code).
    pub programs: BTreeMap<String, BTreeMap<String, Sampled>>,
    /// In the tracepoint's path to a program, outside it (the run-time
    /// accounting below excepted).
    pub hook_path: Sampled,
    /// The kernel's BPF run-time accounting (`bpf_stats_enabled`: a
    /// `sched_clock` read before and after each program run, called from
    /// `trace_call_bpf`).
    pub run_time_stats: Sampled,
    pub total: Sampled,
}

/// The program a JIT symbol names, without the tag.
pub fn program_of(sym: &str) -> Option<&str> {
    let rest = sym.strip_prefix("bpf_prog_")?;
    let (tag, name) = rest.split_once('_')?;
    // The JIT's tag is 16 hex digits; kernel functions named bpf_prog_*
    // (bpf_prog_get_info_by_fd, bpf_prog_calc_tag...) are not programs.
    if tag.len() != 16 || !tag.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(name.split('+').next().unwrap_or(name))
}

/// Reads `perf script -F period,ip,sym` output of call-chain samples.
pub fn parse(text: &str) -> Profile {
    let mut p = Profile::default();
    for sample in text.split("\n\n") {
        let mut lines = sample.lines().filter(|l| !l.trim().is_empty());
        let Some(period) = lines.next().and_then(|l| l.trim().parse::<u64>().ok()) else {
            continue;
        };
        // Frames, leaf first: "<ip> <symbol>".
        let frames: Vec<&str> = lines
            .map(|l| {
                let l = l.trim();
                l.split_once(' ').map_or("[unknown]", |(_, s)| s.trim())
            })
            .collect();
        p.total.add(period);
        let Some(leaf) = frames.first() else { continue };
        // The hook's program is the outermost BPF frame (global functions
        // are frames of their own inside it).
        if let Some(prog) = frames.iter().rev().find_map(|f| program_of(f)) {
            let what = match program_of(leaf) {
                Some(f) if f == prog => "self".to_string(),
                Some(f) => f.to_string(),
                None => leaf.split('+').next().unwrap_or(leaf).to_string(),
            };
            p.programs
                .entry(prog.to_string())
                .or_default()
                .entry(what)
                .or_default()
                .add(period);
        } else if frames
            .windows(2)
            .any(|w| w[0].starts_with("sched_clock") && w[1].starts_with("trace_call_bpf"))
        {
            p.run_time_stats.add(period);
        } else if frames.iter().any(|f| {
            f.starts_with("perf_syscall_exit")
                || f.starts_with("perf_syscall_enter")
                || f.starts_with("trace_call_bpf")
        }) {
            p.hook_path.add(period);
        }
    }
    p
}

/// What kind of work a profile entry (a program's `self`, a global
/// function or a kernel function it called) is.
pub fn kind(what: &str) -> &'static str {
    const KINDS: &[(&str, &[&str])] = &[
        (
            "maps",
            &[
                "lookup_nulls_elem_raw",
                "htab_",
                "__htab_",
                "bpf_lru_",
                "prealloc_lru",
                "pcpu_",
            ],
        ),
        (
            "user memory",
            &[
                "copy_from_user_nofault",
                "__check_object_size",
                "check_stack_object",
                "bpf_probe_read_user",
                "__virt_addr_valid",
                "is_vmalloc_addr",
                "__pi_memcpy",
            ],
        ),
        (
            "clock",
            &["read_tsc", "ktime_get_mono_fast_ns", "bpf_ktime_get_ns"],
        ),
        (
            "task and registers",
            &[
                "bpf_task_pt_regs",
                "bpf_get_current_task_btf",
                "bpf_get_current_pid_tgid",
            ],
        ),
        ("ring buffer", &["__bpf_ringbuf", "bpf_ringbuf_"]),
        ("parsing", &["head_pipelined", "parse_request"]),
    ];
    if what == "self" {
        return "own code";
    }
    KINDS
        .iter()
        .find(|(_, prefixes)| prefixes.iter().any(|p| what.starts_with(p)))
        .map_or("other", |(k, _)| k)
}

/// The profile's BPF time per kind of work, summed over programs
/// (nanoseconds, as sampled).
pub fn by_kind(p: &Profile) -> BTreeMap<&'static str, Sampled> {
    let mut out: BTreeMap<&'static str, Sampled> = BTreeMap::new();
    for parts in p.programs.values() {
        for (what, s) in parts {
            let k = out.entry(kind(what)).or_default();
            k.ns += s.ns;
            k.samples += s.samples;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_grouped_by_program_and_leaf() {
        let text = "    200000 \n\
            \t ffffffff8100 copy_from_user_nofault+0x2a\n\
            \t ffffffffc001 bpf_prog_0123456789abcdef_exit_recvfrom+0x99\n\
            \t ffffffff8200 trace_call_bpf+0x50\n\n\
            \x20   200000 \n\
            \t ffffffffc001 bpf_prog_0123456789abcdef_exit_recvfrom+0x10\n\
            \t ffffffff8200 trace_call_bpf+0x50\n\n\
            \x20   100000 \n\
            \t ffffffffc002 bpf_prog_0123456789abcdef_parse_request+0x8\n\
            \t ffffffffc001 bpf_prog_0123456789abcdef_exit_recvfrom+0x40\n\
            \t ffffffff8200 trace_call_bpf+0x50\n\n\
            \x20   200000 \n\
            \t ffffffff8400 pvclock_clocksource_read_nowd+0x1\n\
            \t ffffffff8401 sched_clock+0x9\n\
            \t ffffffff8200 trace_call_bpf+0x30\n\
            \t ffffffff8300 perf_syscall_exit+0x40\n\n\
            \x20   200000 \n\
            \t ffffffff8200 trace_call_bpf+0x12\n\
            \t ffffffff8300 perf_syscall_exit+0x40\n\n\
            \x20   200000 \n\
            \t 5a97ea2 nginx_main\n";
        let p = parse(text);
        assert_eq!(p.total.samples, 6);
        assert_eq!(p.run_time_stats.samples, 1);
        assert_eq!(p.hook_path.samples, 1);
        let r = &p.programs["exit_recvfrom"];
        assert_eq!(r["self"].ns, 200000);
        assert_eq!(r["copy_from_user_nofault"].samples, 1);
        assert_eq!(r["parse_request"].ns, 100000);
        let k = by_kind(&p);
        assert_eq!(k["own code"].samples, 1);
        assert_eq!(k["user memory"].samples, 1);
        assert_eq!(k["parsing"].samples, 1);
        assert_eq!(kind("htab_map_hash"), "maps");
        assert_eq!(kind("read_tsc"), "clock");
        assert_eq!(kind("nginx_main"), "other");
        assert_eq!(p.programs.len(), 1);
        assert_eq!(
            program_of("bpf_prog_0123456789abcdef_exit_write+0x3"),
            Some("exit_write")
        );
        assert_eq!(program_of("copy_from_user_nofault"), None);
        assert_eq!(program_of("bpf_prog_get_info_by_fd+0x10"), None);
    }
}
