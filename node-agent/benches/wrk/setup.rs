//! What the tracer benches (`wrk`, `soak`) start and remove: a network
//! namespace of their own, nginx (one worker) serving loopback in it, the
//! agent process on a pin root of its own. It starts and stops; it
//! measures nothing.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bpfleet_testsupport::agent::{AgentFiles, AgentProcess};
use bpfleet_testsupport::netns::{self, Netns};

/// Everything a bench starts or creates; removed on drop, also on panic:
/// nginx and the agent killed, then the pin root, then (as a field, last)
/// the namespace.
pub struct Setup {
    pub pin_root: PathBuf,
    pub scratch: tempfile::TempDir,
    pub nginx: Option<Child>,
    pub agent: Option<AgentProcess>,
    pub netns: Netns,
}

impl Setup {
    /// A namespace `bpfleet-<tag>-<pid>`, a pin root
    /// `/sys/fs/bpf/bpfleet-<tag>-<pid>`, a scratch directory; nothing
    /// started yet.
    pub fn new(tag: &str) -> Self {
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/bpfleet-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&pin_root).unwrap();
        Self {
            pin_root,
            scratch: tempfile::tempdir().unwrap(),
            nginx: None,
            agent: None,
            netns: Netns::new(tag),
        }
    }

    pub fn netns_path(&self) -> String {
        self.netns.path()
    }

    /// nginx's access log (one line per request, its status), when
    /// [`start_nginx`] was asked for one.
    pub fn access_log(&self) -> PathBuf {
        self.scratch.path().join("access.log")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(c) = self.nginx.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        drop(self.agent.take());
        // Pinned programs and links go with their pins.
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

/// nginx, one worker, on 127.0.0.1:`port` in the namespace, answering 200
/// "ok"; with `access_log`, one line per request in [`Setup::access_log`]
/// (unbuffered: every line is written when its request is done).
pub fn start_nginx(s: &mut Setup, port: u16, access_log: bool) {
    let d = s.scratch.path().display().to_string();
    let log = if access_log {
        format!(
            "log_format bench '$status'; access_log {};",
            s.access_log().display()
        )
    } else {
        "access_log off;".to_string()
    };
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; error_log {d}/error.log; pid {d}/nginx.pid;\n\
         events {{ worker_connections 4096; }}\n\
         http {{ {log} keepalive_requests 100000000; keepalive_timeout 300s; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
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
        netns::enter(&ns);
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

/// The agent `bin` on the setup's pin root, metrics on 127.0.0.1:
/// `metrics_port`, unsigned objects allowed; returns its socket.
pub fn start_agent(s: &mut Setup, bin: &Path, metrics_port: u16) -> PathBuf {
    let files = AgentFiles::new(&s.pin_root, s.scratch.path());
    let metrics = format!("127.0.0.1:{metrics_port}");
    let agent = AgentProcess::start(
        bin,
        &files,
        None,
        &["--metrics-listen", &metrics, "--allow-unsigned"],
        &[("RUST_LOG", "warn")],
    );
    s.agent = Some(agent);
    files.socket
}
