//! Shared test fixtures: a private pin root on bpffs, a private network
//! namespace, an agent process, and request builders. Every fixture removes
//! what it made when dropped, also when the test fails.
// Fixtures are test code: a failed setup panics, which is the report.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bpfleet_agent::kernel;
use bpfleet_proto::v1::{self as pb, HookKind, load_request::Source};
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

    pub fn state_file(&self) -> PathBuf {
        self.scratch.path().join("state.json")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.scratch.path().join("audit.jsonl")
    }

    pub fn socket(&self) -> PathBuf {
        self.scratch.path().join("agent.sock")
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

/// A network namespace of its own with a veth pair (veth0 <-> veth1, both
/// up, inside the namespace), removed on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("bpfleet-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&[
            "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ]);
        ns.exec(&["ip", "link", "set", "veth0", "up"]);
        ns.exec(&["ip", "link", "set", "veth1", "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace (nsenter keeps our mounts, so
    /// pins stay visible; `ip netns exec` would hide them).
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["--net=".to_string() + &self.path()];
        full.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        run("nsenter", &refs);
    }

    /// Sends `n` frames of EtherType 0x88b5 out of veth0 (they arrive on
    /// veth1), paced so the veth queue never overflows. Runs on a thread
    /// that enters the namespace.
    pub fn send_frames(&self, n: u64) -> u64 {
        let path = self.path();
        std::thread::spawn(move || send_frames_in(&path, n))
            .join()
            .expect("sender thread")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Enters the netns at `path` on this thread and sends `n` raw frames out of
/// veth0. Returns the number sent.
pub fn send_frames_in(path: &str, n: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("open netns");
    // SAFETY: plain syscalls on fds and buffers we own.
    unsafe {
        assert_eq!(libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET), 0, "setns");
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

/// An agent process, killed on drop.
pub struct AgentProc {
    pub child: Child,
    pub socket: PathBuf,
}

impl AgentProc {
    /// Starts `bpfleet-agent serve` (inside `netns` when given) and waits
    /// until its socket answers.
    pub fn start(root: &PinRoot, netns: Option<&Netns>, extra: &[&str]) -> Self {
        let bin = env!("CARGO_BIN_EXE_bpfleet-agent");
        let socket = root.socket();
        let mut args: Vec<String> = Vec::new();
        let mut cmd = if let Some(ns) = netns {
            args.push(format!("--net={}", ns.path()));
            args.push(bin.to_string());
            Command::new("nsenter")
        } else {
            Command::new(bin)
        };
        args.extend(
            [
                "serve",
                "--pin-root",
                root.path.to_str().unwrap(),
                "--state-file",
                root.state_file().to_str().unwrap(),
                "--audit-log",
                root.audit_log().to_str().unwrap(),
                "--socket",
                socket.to_str().unwrap(),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let _ = std::fs::remove_file(&socket);
        let child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn agent");
        let me = Self { child, socket };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !me.socket.exists() {
            assert!(Instant::now() < deadline, "agent socket did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    pub fn kill9(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    pub async fn client(&self) -> pb::agent_client::AgentClient<tonic::transport::Channel> {
        bpfleet_agent::cli::connect_unix(self.socket.clone())
            .await
            .expect("connect")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn entry(prog: &str, hook: HookKind, target: &str) -> pb::ProgramEntry {
    pb::ProgramEntry {
        bpf_program: prog.into(),
        hook: hook as i32,
        target: target.into(),
        pid: 0,
    }
}

pub fn load_req(
    program: &str,
    revision: &str,
    obj: &[u8],
    entries: Vec<pb::ProgramEntry>,
    persistent: &[&str],
) -> pb::LoadRequest {
    pb::LoadRequest {
        program: program.into(),
        revision: revision.into(),
        source: Some(Source::Object(obj.to_vec())),
        sha256: bpfleet_agent::trust::sha256_hex(obj),
        signature: String::new(),
        entries,
        persistent_maps: persistent.iter().map(|s| s.to_string()).collect(),
        budget: None,
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
