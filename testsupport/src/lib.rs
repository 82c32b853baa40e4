//! Test support shared by every crate's tests and benches: the one place for
//! helpers that would otherwise be copied between `tests/` folders. Nothing
//! here is used by a shipped binary: the crates take it as a
//! dev-dependency, and the e2e harness (itself test-only) as a dependency
//! for its ports. Helpers panic with a message naming what failed,
//! as a test wants.
//!
//! It owns: loopback ports and commands that must succeed (here), the HTTP
//! test server and a GET for the agent's endpoints ([`http`]), the
//! Prometheus text parser ([`metrics`]), Python's `http.server`
//! ([`python`]), agent processes ([`agent`]), network namespaces
//! ([`netns`]), cgroup2 directories ([`cgroup`]), load requests built
//! from objects ([`request`]), perf profiles ([`perf`]), a real OCI
//! registry with TLS and basic auth ([`registry`]), the real cosign CLI
//! ([`cosign`]) and bpfman-format bytecode images built by buildah
//! ([`buildah`]). It must not depend on `bpfleet-agent` (whose tests use it)
//! nor on any crate above the wire types: agent calls belong in the agent's
//! own `tests/common`.

pub mod agent;
pub mod buildah;
pub mod cgroup;
pub mod cosign;
pub mod http;
pub mod metrics;
pub mod netns;
pub mod perf;
pub mod python;
pub mod registry;
pub mod request;

use std::net::TcpListener;
use std::process::Command;

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then let go).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// The whole machine's busy CPU time in seconds (every CPU: user, nice,
/// system, irq, softirq, steal; not idle or iowait), from /proc/stat.
pub fn machine_cpu_seconds() -> f64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = text
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|i| f.get(*i))
        .sum::<u64>();
    // SAFETY: sysconf has no side effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy as f64 / hz
}

/// Runs `cmd args...` and panics with its stderr unless it succeeds.
pub fn run(cmd: &str, args: &[&str]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let p = free_port();
        assert_ne!(p, 0);
        TcpListener::bind(("127.0.0.1", p)).expect("the port is free");
    }

    #[test]
    #[should_panic(expected = "false")]
    fn a_failing_command_panics_with_its_name() {
        run("false", &[]);
    }

    #[test]
    fn a_succeeding_command_returns() {
        run("true", &[]);
    }
}
