//! Python's `http.server` as a second, independent HTTP server for tests
//! (another process, another language runtime than the test's own). Starts
//! it on loopback serving a temporary directory, waits until it accepts,
//! kills it when dropped. Owns nothing else: where the process lives
//! (a cgroup, a namespace) is the caller's, through the `spawned` hook.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `python3 -m http.server` on 127.0.0.1, killed on drop.
pub struct PythonServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PythonServer {
    /// Serves `files` (name, content) on a free port.
    pub fn start(files: &[(&str, &str)]) -> Self {
        Self::start_on(crate::free_port(), files, |_| {})
    }

    /// Serves `files` on `port`; `spawned(pid)` runs as soon as the process
    /// exists, before it serves anything (to move it into a cgroup, say).
    pub fn start_on(port: u16, files: &[(&str, &str)], spawned: impl FnOnce(u32)) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("python server dir: {e}"));
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content)
                .unwrap_or_else(|e| panic!("python server file {name}: {e}"));
        }
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 (apt-get install python3): {e}"));
        let me = Self {
            port,
            child,
            _dir: dir,
        };
        spawned(me.pid());
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "python http.server did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        me
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
