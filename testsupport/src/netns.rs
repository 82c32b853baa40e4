//! Network namespaces of a test's own: created with `ip netns`, entered by
//! commands through nsenter (which keeps our mounts, so bpffs pins stay
//! visible; `ip netns exec` would hide them) or by a thread through
//! setns(2), removed when dropped. Nothing here attaches programs or
//! sends traffic; the tests do.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::run;

/// A network namespace `bpfleet-<tag>-<pid>` with `lo` up, removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A namespace with only `lo`, up.
    pub fn new(tag: &str) -> Self {
        let name = format!("bpfleet-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A namespace with `lo` and a veth pair (veth0 <-> veth1), all up.
    pub fn with_veth(tag: &str) -> Self {
        let ns = Self::new(tag);
        ns.exec(&[
            "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ]);
        ns.exec(&["ip", "link", "set", "veth0", "up"]);
        ns.exec(&["ip", "link", "set", "veth1", "up"]);
        ns
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace; panics unless it succeeds.
    pub fn exec(&self, args: &[&str]) {
        let net = format!("--net={}", self.path());
        let mut full = vec![net.as_str()];
        full.extend_from_slice(args);
        run("nsenter", &full);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // `ip netns del` can fail while the namespace's last users are
        // still going away (measured: the name outlived a bench once).
        let path = self.path();
        for _ in 0..50 {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .stderr(Stdio::null())
                .status();
            if !Path::new(&path).exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open netns {path}: {e}"));
    // SAFETY: setns on an fd we own; affects this thread only.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}
