//! Node and agent-process figures from `/proc`, for `Stats`: the node's CPU
//! time by state (`/proc/stat`), the agent's own CPU time
//! (`/proc/self/stat`) and resident memory (`/proc/self/status`). All
//! cumulative (or, for memory, current), so the operator takes differences
//! between two answers. Alongside them, whether the kernel has BTF
//! (`/sys/kernel/btf/vmlinux`), checked once per agent process.
//!
//! The parsers are pure functions of the files' text; [`read_node_figures`]
//! reads the real files. A file that is missing or does not parse gives no
//! figures (`None`), never a zero that would look like a measurement.

use std::path::Path;
use std::sync::OnceLock;

use bpfleet_proto::v1 as pb;

/// The kernel's own BTF, present on kernels built with
/// `CONFIG_DEBUG_INFO_BTF`.
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The `cpu ` line of `/proc/stat`: jiffies since boot over every CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeCpu {
    /// user + nice + system + idle + iowait + irq + softirq + steal (guest
    /// and guest_nice are already counted in user and nice).
    pub total: u64,
    pub softirq: u64,
    pub system: u64,
    /// `cpuN` lines: the CPUs the `cpu ` line sums.
    pub cpus: u32,
}

/// Parses `/proc/stat`. None without a `cpu ` line of at least the eight
/// fields up to steal (kernels since 2.6.11), or with no `cpuN` line.
pub fn parse_proc_stat(text: &str) -> Option<NodeCpu> {
    let mut all = None;
    let mut cpus = 0u32;
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        match words.next() {
            Some("cpu") => {
                let fields: Vec<u64> = words
                    .take(8)
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                if fields.len() < 8 {
                    return None;
                }
                let total = fields.iter().try_fold(0u64, |acc, f| acc.checked_add(*f))?;
                all = Some((total, fields[6], fields[2]));
            }
            Some(w) if w.len() > 3 && w.starts_with("cpu") && w[3..].parse::<u32>().is_ok() => {
                cpus = cpus.saturating_add(1);
            }
            _ => {}
        }
    }
    let (total, softirq, system) = all?;
    (cpus > 0).then_some(NodeCpu {
        total,
        softirq,
        system,
        cpus,
    })
}

/// utime + stime of a `/proc/<pid>/stat` line, in jiffies. The command
/// name in parentheses may hold spaces and parentheses: fields are counted
/// from the last `)`.
pub fn parse_self_stat(text: &str) -> Option<u64> {
    let after = &text[text.rfind(')')? + 1..];
    // After the name: state is field 3, utime 14 and stime 15.
    let mut fields = after.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// `VmRSS` of a `/proc/<pid>/status`, in bytes.
pub fn parse_vm_rss(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = line.split_ascii_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    if words.next()? != "kB" {
        return None;
    }
    kib.checked_mul(1024)
}

/// The figures of three texts (None: the file could not be read) and of
/// whether the kernel has BTF (None: unknown). None when nothing at all is
/// known; a node whose only figure is its BTF still reports that.
pub fn node_figures(
    proc_stat: Option<&str>,
    self_stat: Option<&str>,
    self_status: Option<&str>,
    btf_present: Option<bool>,
) -> Option<pb::NodeFigures> {
    let cpu = proc_stat.and_then(parse_proc_stat);
    let f = pb::NodeFigures {
        cpu_total_jiffies: cpu.map(|c| c.total),
        cpu_softirq_jiffies: cpu.map(|c| c.softirq),
        cpu_system_jiffies: cpu.map(|c| c.system),
        cpus: cpu.map(|c| c.cpus),
        agent_cpu_jiffies: self_stat.and_then(parse_self_stat),
        agent_rss_bytes: self_status.and_then(parse_vm_rss),
        btf_present,
    };
    (f != pb::NodeFigures::default()).then_some(f)
}

/// The figures of this node and process now, from the real files.
pub fn read_node_figures() -> Option<pb::NodeFigures> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    node_figures(
        read("/proc/stat").as_deref(),
        read("/proc/self/stat").as_deref(),
        read("/proc/self/status").as_deref(),
        btf_present(),
    )
}

/// The node's online CPUs: the `cpuN` lines of `/proc/stat`. None when
/// the file cannot be read or parsed.
pub fn online_cpus() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&text).map(|c| c.cpus)
}

/// Whether the kernel exposes its own BTF, checked the first time it is
/// asked and kept for the life of the process (a kernel does not gain or
/// lose it while it runs). None when the check itself failed (e.g.
/// `/sys/kernel/btf` not readable): unknown, not absent.
pub fn btf_present() -> Option<bool> {
    static BTF: OnceLock<Option<bool>> = OnceLock::new();
    *BTF.get_or_init(|| Path::new(VMLINUX_BTF).try_exists().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "\
cpu  3932347 2041163 1468632 1910228 51822 0 66293 86994 0 0
cpu0 1941622 951315 736115 1062419 15741 0 30293 42834 0 0
cpu1 1990725 1089848 732517 847808 36081 0 36000 44160 0 0
intr 1 2 3
ctxt 123
btime 1700000000
processes 42
procs_running 1
softirq 100 1 2 3 4 5 6 7 8 9 10
";

    #[test]
    fn proc_stat_sums_the_cpu_line() {
        let c = parse_proc_stat(STAT).expect("parses");
        assert_eq!(
            c,
            NodeCpu {
                total: 3932347 + 2041163 + 1468632 + 1910228 + 51822 + 66293 + 86994,
                softirq: 66293,
                system: 1468632,
                cpus: 2,
            }
        );
        // Guest time is inside user: the last two fields are not added.
        let guest = STAT.replacen("86994 0 0", "86994 500 7", 1);
        assert_eq!(parse_proc_stat(&guest).map(|c| c.total), Some(c.total));
        // An old kernel's shorter line (no guest fields) still parses.
        let short = STAT.replacen("86994 0 0", "86994", 1);
        assert_eq!(parse_proc_stat(&short).map(|c| c.total), Some(c.total));
    }

    #[test]
    fn unparsable_proc_stat_gives_nothing() {
        for bad in [
            "",
            "intr 1 2 3\n",
            "cpu  1 2 3\ncpu0 1 2 3\n",
            "cpu  1 2 x 4 5 6 7 8\ncpu0 1 2 3 4 5 6 7 8\n",
            // Totals with no cpuN line: no CPU count, no figures.
            "cpu  1 2 3 4 5 6 7 8 0 0\n",
            "cpu  18446744073709551615 1 1 1 1 1 1 1\ncpu0 1 1 1 1 1 1 1 1\n",
        ] {
            assert_eq!(parse_proc_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn self_stat_counts_from_the_last_parenthesis() {
        let line = "9131 (cat) R 9126 9126 5723 0 -1 4194304 100 0 0 0 17 4 0 0 20 0 1 0 \
                    4788545 3133440 387 18446744073709551615 0\n";
        assert_eq!(parse_self_stat(line), Some(21));
        let odd = "77 (a) b (c) 1) S 1 1 1 0 -1 0 0 0 0 0 300 200 0 0 20 0 1 0 1 2 3\n";
        assert_eq!(parse_self_stat(odd), Some(500));
        for bad in [
            "",
            "77 (a S 1 1",
            "77 (a) S 1 1 1 0 -1 0 0 0 0 0 x 2",
            "1 (a) S 1",
        ] {
            assert_eq!(parse_self_stat(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn vm_rss_in_bytes() {
        let status = "Name:\tbpfleet-agent\nVmPeak:\t  9000 kB\nVmRSS:\t    2152 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(2152 * 1024));
        for bad in [
            "",
            "Name:\tkthreadd\n",
            "VmRSS:\t x kB\n",
            "VmRSS:\t 12 MB\n",
            "VmRSS:\t12\n",
        ] {
            assert_eq!(parse_vm_rss(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn figures_are_absent_per_file_and_all_absent_is_none() {
        let status = "VmRSS:\t 4 kB\n";
        let f = node_figures(Some(STAT), None, Some(status), Some(true)).expect("some figures");
        assert_eq!(f.cpus, Some(2));
        assert_eq!(f.cpu_softirq_jiffies, Some(66293));
        assert_eq!(f.agent_cpu_jiffies, None, "no /proc/self/stat: no figure");
        assert_eq!(f.agent_rss_bytes, Some(4096));
        assert_eq!(f.btf_present, Some(true));
        let f = node_figures(Some(STAT), None, None, None).expect("some figures");
        assert_eq!(f.btf_present, None, "unknown BTF is not absent BTF");
        assert_eq!(node_figures(None, None, None, None), None);
        assert_eq!(
            node_figures(Some("garbage"), Some("x"), Some("y"), None),
            None
        );
    }

    #[test]
    fn btf_alone_is_still_reported() {
        // Nothing of /proc readable, yet the node says whether it has BTF,
        // either way: absent BTF is a figure too.
        for btf in [true, false] {
            let f = node_figures(None, None, None, Some(btf)).expect("btf figure");
            assert_eq!(
                f,
                pb::NodeFigures {
                    btf_present: Some(btf),
                    ..Default::default()
                }
            );
        }
    }

    #[test]
    fn btf_check_is_cached_and_matches_the_file() {
        let first = btf_present();
        assert_eq!(first, Path::new(VMLINUX_BTF).try_exists().ok());
        assert_eq!(btf_present(), first, "the same answer every time");
        assert_eq!(
            read_node_figures().and_then(|f| f.btf_present),
            first,
            "the figures carry the cached answer"
        );
    }
}
