//! The node agent as a process of the test's own: `bpfleet-agent serve`
//! started (inside a network namespace when asked) on a pin root, state
//! file, audit log and Unix socket the caller chose, waited for until its
//! socket exists, killed when dropped. The binary's path comes from the
//! caller (`CARGO_BIN_EXE_bpfleet-agent` in the agent's tests), and so does
//! the gRPC client: this crate must not depend on `bpfleet-agent`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where an agent keeps its things.
#[derive(Clone, Debug)]
pub struct AgentFiles {
    pub pin_root: PathBuf,
    pub state_file: PathBuf,
    pub audit_log: PathBuf,
    pub socket: PathBuf,
}

impl AgentFiles {
    /// Pins under `pin_root`; `state.json`, `audit.jsonl` and `agent.sock`
    /// in `scratch`.
    pub fn new(pin_root: &Path, scratch: &Path) -> Self {
        Self {
            pin_root: pin_root.to_path_buf(),
            state_file: scratch.join("state.json"),
            audit_log: scratch.join("audit.jsonl"),
            socket: scratch.join("agent.sock"),
        }
    }

    /// The `serve` arguments that name these files, before any extra ones.
    pub fn serve_args(&self) -> Vec<String> {
        [
            ("--pin-root", &self.pin_root),
            ("--state-file", &self.state_file),
            ("--audit-log", &self.audit_log),
            ("--socket", &self.socket),
        ]
        .iter()
        .flat_map(|(flag, p)| [flag.to_string(), p.display().to_string()])
        .collect()
    }
}

/// A running `bpfleet-agent serve`, killed on drop.
pub struct AgentProcess {
    pub child: Child,
    pub socket: PathBuf,
}

impl AgentProcess {
    /// Starts `bin serve` with `files`, then `extra` arguments and `env`
    /// variables, inside the network namespace at `netns` (a
    /// `/run/netns/...` path, entered with nsenter, which keeps our mounts)
    /// when given; returns once its socket accepts a connection (20 s at
    /// most).
    pub fn start(
        bin: &Path,
        files: &AgentFiles,
        netns: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_logged(bin, files, netns, extra, env, None)
    }

    /// [`AgentProcess::start`], the agent's stdout and stderr written to
    /// `log` when given (inherited otherwise).
    pub fn start_logged(
        bin: &Path,
        files: &AgentFiles,
        netns: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
        log: Option<&Path>,
    ) -> Self {
        let out = log.map(|log| {
            let f = std::fs::File::create(log)
                .unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
            let f2 = f
                .try_clone()
                .unwrap_or_else(|e| panic!("dup {}: {e}", log.display()));
            (f, f2)
        });
        Self::start_with(bin, files, netns, extra, env, out)
    }

    /// [`AgentProcess::start`], the agent's stdout written to `stdout` and
    /// its stderr to `stderr` (the BPF log's JSON lines apart from the
    /// agent's own logs).
    pub fn start_split(
        bin: &Path,
        files: &AgentFiles,
        extra: &[&str],
        stdout: &Path,
        stderr: &Path,
    ) -> Self {
        let create = |p: &Path| {
            std::fs::File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()))
        };
        Self::start_with(
            bin,
            files,
            None,
            extra,
            &[],
            Some((create(stdout), create(stderr))),
        )
    }

    fn start_with(
        bin: &Path,
        files: &AgentFiles,
        netns: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
        out: Option<(std::fs::File, std::fs::File)>,
    ) -> Self {
        let mut args: Vec<String> = Vec::new();
        let mut cmd = if let Some(ns) = netns {
            args.push(format!("--net={ns}"));
            args.push(bin.display().to_string());
            Command::new("nsenter")
        } else {
            Command::new(bin)
        };
        args.push("serve".into());
        args.extend(files.serve_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let _ = std::fs::remove_file(&files.socket);
        cmd.args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        if let Some((stdout, stderr)) = out {
            cmd.stdout(stdout).stderr(stderr);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e} (is the agent built?)", bin.display()));
        let me = Self {
            child,
            socket: files.socket.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // The file appears at bind(2), before listen(2): a connect in
        // between is refused, so wait for one that is accepted.
        while std::os::unix::net::UnixStream::connect(&me.socket).is_err() {
            assert!(Instant::now() < deadline, "agent socket did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        me
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, as the kubelet stops a pod, and reap; SIGKILL after 20 s.
    /// The exit status.
    ///
    /// # Panics
    ///
    /// When the child cannot be reaped (a test helper: the panic is the
    /// report).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self
                    .child
                    .wait()
                    .unwrap_or_else(|e| panic!("reaping the agent: {e}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` and reap: the agent gets no chance to clean up.
    pub fn kill9(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_args_name_every_file() {
        let f = AgentFiles::new(Path::new("/sys/fs/bpf/x"), Path::new("/tmp/s"));
        assert_eq!(
            f.serve_args(),
            [
                "--pin-root",
                "/sys/fs/bpf/x",
                "--state-file",
                "/tmp/s/state.json",
                "--audit-log",
                "/tmp/s/audit.jsonl",
                "--socket",
                "/tmp/s/agent.sock"
            ]
        );
    }
}
