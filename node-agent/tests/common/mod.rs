//! Fixtures of the agent's integration tests: a private pin root on bpffs,
//! a private network namespace that can send raw frames, the agent as a
//! process or in-process, and the test objects' load requests. Every
//! fixture removes what it made when dropped, also when the test fails.
//! What other crates' tests need too (ports, servers, agent processes,
//! request builders, namespaces, cgroups) lives in `bpfleet-testsupport`
//! and is re-exported here; this module holds only what needs the agent's
//! own API or the agent tests' objects. The HTTP tracer's helpers are in
//! [`http`].
// Fixtures are test code: a failed setup panics, which is the report. Each
// test binary uses a different part of them (and of the re-exports).
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod http;

use std::collections::BTreeSet;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use bpfleet_agent::agent::request::{ports_write, slots_write};
use bpfleet_agent::{Agent, Config, kernel};
use bpfleet_proto::v1::{self as pb, HookKind};
pub use bpfleet_testsupport::agent::{AgentFiles, AgentProcess};
pub use bpfleet_testsupport::netns::{self, Netns};
pub use bpfleet_testsupport::request::{entry, load_request as load_req, tracepoints};
pub use bpfleet_testsupport::{free_port, run};
use libbpf_rs::{MapCore, MapFlags, MapHandle};

/// A pin root of its own under /sys/fs/bpf, removed on drop.
pub struct PinRoot {
    pub path: PathBuf,
    pub scratch: tempfile::TempDir,
}

impl PinRoot {
    pub fn new(tag: &str) -> Self {
        kernel::ensure_bpffs(Path::new("/sys/fs/bpf")).expect("bpffs on /sys/fs/bpf");
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/bpfleet-test-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create pin root");
        Self {
            path,
            scratch: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The agent's files: pins here, the rest in the scratch directory.
    pub fn files(&self) -> AgentFiles {
        AgentFiles::new(&self.path, self.scratch.path())
    }

    pub fn state_file(&self) -> PathBuf {
        self.files().state_file
    }

    pub fn audit_log(&self) -> PathBuf {
        self.files().audit_log
    }

    pub fn socket(&self) -> PathBuf {
        self.files().socket
    }

    /// Every file (pin) below the root.
    pub fn pins(&self) -> Vec<PathBuf> {
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        walk(&e.path(), out);
                    } else {
                        out.push(e.path());
                    }
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.path, &mut v);
        v.sort();
        v
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The agent core in-process on `root`: unsigned objects allowed, audited.
pub fn agent(root: &PinRoot) -> Agent {
    let mut cfg = Config::new(&root.path, root.state_file());
    cfg.allow_unsigned = true;
    cfg.audit_log = Some(root.audit_log());
    Agent::new(cfg).expect("agent starts")
}

/// Raw frames out of a namespace made by [`Netns::with_veth`].
pub trait SendFrames {
    /// Sends `n` frames of EtherType 0x88b5 out of veth0 (they arrive on
    /// veth1), paced so the veth queue never overflows. Runs on a thread
    /// that enters the namespace.
    fn send_frames(&self, n: u64) -> u64;
}

impl SendFrames for Netns {
    fn send_frames(&self, n: u64) -> u64 {
        let path = self.path();
        std::thread::spawn(move || send_frames_in(&path, n))
            .join()
            .expect("sender thread")
    }
}

/// Enters the netns at `path` on this thread and sends `n` raw frames out of
/// veth0. Returns the number sent.
pub fn send_frames_in(path: &str, n: u64) -> u64 {
    netns::enter(path);
    // SAFETY: plain syscalls on fds and buffers we own.
    unsafe {
        let proto = (0x88b5u16).to_be();
        let s = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
        assert!(s >= 0, "packet socket");
        let ifindex = libc::if_nametoindex(c"veth0".as_ptr());
        assert!(ifindex > 0);
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        let mut frame = [0u8; 60];
        frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        frame[12] = 0x88;
        frame[13] = 0xb5;
        let mut sent = 0;
        for i in 0..n {
            let rc = libc::sendto(
                s,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                rc,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
            sent += 1;
            if i % 16 == 15 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        libc::close(s);
        sent
    }
}

/// The `bpfleet-agent` of this build as a process, killed on drop.
pub struct AgentProc(pub AgentProcess);

impl AgentProc {
    /// Starts `bpfleet-agent serve` on `root` (inside `netns` when given)
    /// and waits until its socket answers.
    pub fn start(root: &PinRoot, netns: Option<&Netns>, extra: &[&str]) -> Self {
        let bin = Path::new(env!("CARGO_BIN_EXE_bpfleet-agent"));
        let ns = netns.map(Netns::path);
        Self(AgentProcess::start(
            bin,
            &root.files(),
            ns.as_deref(),
            extra,
            &[],
        ))
    }

    /// [`AgentProc::start`] with environment variables, stdout and stderr
    /// written to `log`.
    pub fn start_logged(root: &PinRoot, extra: &[&str], env: &[(&str, &str)], log: &Path) -> Self {
        let bin = Path::new(env!("CARGO_BIN_EXE_bpfleet-agent"));
        Self(AgentProcess::start_logged(
            bin,
            &root.files(),
            None,
            extra,
            env,
            Some(log),
        ))
    }

    pub async fn client(&self) -> pb::agent_client::AgentClient<tonic::transport::Channel> {
        bpfleet_agent::cli::connect_unix(self.socket.clone())
            .await
            .expect("connect")
    }
}

impl Deref for AgentProc {
    type Target = AgentProcess;
    fn deref(&self) -> &AgentProcess {
        &self.0
    }
}

impl DerefMut for AgentProc {
    fn deref_mut(&mut self) -> &mut AgentProcess {
        &mut self.0
    }
}

pub const GETPPID_TP: &str = "syscalls/sys_enter_getppid";

pub fn syscount(revision: &str, obj: &[u8]) -> pb::LoadRequest {
    load_req(
        "syscount",
        revision,
        obj,
        vec![entry("count_getppid", HookKind::Tracepoint, GETPPID_TP)],
        &["counts"],
    )
}

/// Reads slot `k` (u32 key, u64 value) of a pinned array map.
pub fn slot(pin: &Path, k: u32) -> u64 {
    let m =
        MapHandle::from_pinned_path(pin).unwrap_or_else(|e| panic!("open {}: {e}", pin.display()));
    let v = m
        .lookup(&k.to_ne_bytes(), MapFlags::ANY)
        .expect("lookup")
        .expect("slot present");
    u64::from_ne_bytes(v[..8].try_into().unwrap())
}

pub fn slots(pin: &Path) -> [u64; 4] {
    [slot(pin, 0), slot(pin, 1), slot(pin, 2), slot(pin, 3)]
}

/// Current thread id.
pub fn gettid() -> u32 {
    // SAFETY: no arguments, no side effects.
    unsafe { libc::gettid() as u32 }
}

/// `n` getppid(2) calls on this thread.
pub fn getppid_n(n: u64) {
    for _ in 0..n {
        // SAFETY: no arguments, no side effects.
        unsafe { libc::getppid() };
    }
}

/// Config entry: slot 0 of bpfleet_config = `tid` (only that thread counts).
pub fn only_thread(program: &str, tid: u32) -> pb::UpdateConfigRequest {
    pb::UpdateConfigRequest {
        program: program.into(),
        map: String::new(),
        entries: vec![pb::ConfigEntry {
            key: 0u32.to_ne_bytes().to_vec(),
            value: u64::from(tid).to_ne_bytes().to_vec(),
        }],
        replace: false,
        namespaces: None,
        tracer_rules: None,
        cpu_budget: None,
        alerts: None,
    }
}

/// Whether a BPF program id still exists in the kernel, allowing the
/// kernel up to 5 s to finish its deferred release of links and programs.
pub fn prog_exists(id: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while libbpf_rs::Program::fd_from_id(id).is_ok() {
        if Instant::now() > deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Whether a pin is one of a revision's programs (`prog_<name>`).
pub fn is_prog_pin(pin: &str) -> bool {
    Path::new(pin)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("prog_"))
}

/// `bpftool -j <args>`, parsed.
pub fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool JSON")
}

/// The ids of `bpftool -j <args>`'s array.
pub fn bpftool_ids(args: &[&str]) -> BTreeSet<u32> {
    bpftool_json(args)
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_u64())
        .map(|id| id as u32)
        .collect()
}

/// The program id in slot 0 of a dispatcher's program array (0: empty).
pub fn slot_prog(pin: &Path) -> u32 {
    use libbpf_rs::{MapCore, MapFlags, MapHandle};
    let m = MapHandle::from_pinned_path(pin).unwrap();
    m.lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
        .unwrap()
        .map_or(0, |v| u32::from_ne_bytes(v[..4].try_into().unwrap()))
}

/// Which revision counts this thread's getppid(2) calls: "v1" (slot 0),
/// "v2" (slot 1), or "" (none).
pub fn counting(root: &PinRoot) -> &'static str {
    let counts = root.path.join("syscount/_map_counts");
    let before = slots(&counts);
    getppid_n(10);
    let after = slots(&counts);
    match (after[0] - before[0], after[1] - before[1]) {
        (10, 0) => "v1",
        (0, 10) => "v2",
        (0, 0) => "",
        other => panic!("counted {other:?} of 10 calls"),
    }
}
