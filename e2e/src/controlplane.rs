//! etcd + kube-apiserver as child processes on loopback.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bpfleet_testsupport::free_port;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::pki::{self, Ca};
use crate::{Error, Result, io};

/// How long the apiserver may take to report ready (cold start on 2 cores is
/// about 10 s; etcd compaction or a loaded machine can double it).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// Starts tried when a port was taken between choosing and binding it.
const START_ATTEMPTS: u32 = 3;

/// The repository root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where etcd, kube-apiserver and kubectl are looked up:
/// `$BPFLEET_CONTROLPLANE_BIN`, else `.cache/controlplane/bin` in the repo.
pub fn binary_dir() -> PathBuf {
    std::env::var_os("BPFLEET_CONTROLPLANE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/controlplane/bin"))
}

fn binary(name: &str) -> Result<PathBuf> {
    let path = binary_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::MissingBinary(path))
    }
}

/// A running control plane. Dropping it stops both processes and removes
/// their data.
///
/// Tests that fault the control plane kill and start its processes again
/// with the flags, ports, certificates and etcd data they started with:
/// [`ControlPlane::stop_apiserver`], [`ControlPlane::start_apiserver`],
/// [`ControlPlane::restart_etcd`].
pub struct ControlPlane {
    // Field order matters: processes are stopped (Drop body) before the
    // directory holding their data is removed (field drop).
    etcd: Option<Child>,
    apiserver: Option<Child>,
    /// How each process was started, to start it again the same way.
    etcd_cmd: Launch,
    apiserver_cmd: Launch,
    etcd_url: String,
    /// Address of the apiserver, `https://127.0.0.1:<port>`.
    pub server: String,
    /// Admin kubeconfig (user `bpfleet-admin` in `system:masters`).
    pub kubeconfig: PathBuf,
    /// The CA that signed the serving and client certificates.
    pub ca: Ca,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers.
    ///
    /// The ports are free a moment before the processes bind them, and
    /// another process on the machine can take one in between (it happened
    /// in a test run: the apiserver exited with "address already in use").
    /// Such a start is retried with new ports and a new directory, up to
    /// [`START_ATTEMPTS`] times; any other failure is returned at once.
    pub async fn start() -> Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::start_once().await {
                Err(e) if attempt < START_ATTEMPTS && e.is_port_taken() => {
                    eprintln!("control plane: a port was taken before it was bound, retrying: {e}");
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    async fn start_once() -> Result<Self> {
        let etcd_bin = binary("etcd")?;
        let apiserver_bin = binary("kube-apiserver")?;
        let dir = tempfile::Builder::new()
            .prefix("bpfleet-controlplane-")
            .tempdir()
            .map_err(io("creating the control-plane directory"))?;
        let root = dir.path().to_path_buf();

        let ca = Ca::new("bpfleet-test-ca")?;
        let serving = ca.server("kube-apiserver", &["127.0.0.1", "localhost"])?;
        let admin = ca.client("bpfleet-admin", Some("system:masters"))?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = root.join(name);
            fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
            Ok(path)
        };
        let ca_crt = write("ca.crt", &ca.pair.cert_pem)?;
        let tls_crt = write("apiserver.crt", &serving.cert_pem)?;
        let tls_key = write("apiserver.key", &serving.key_pem)?;
        let (sa_private, sa_public) = pki::key_pair_pem()?;
        let sa_key = write("sa.key", &sa_private)?;
        let sa_pub = write("sa.pub", &sa_public)?;

        // Loopback ports free a moment ago (the shared test helper; it
        // panics only when nothing on 127.0.0.1 can be bound at all).
        let etcd_client = free_port();
        let etcd_peer = free_port();
        let api_port = free_port();
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let etcd_cmd = Launch {
            name: "etcd",
            bin: etcd_bin,
            log: root.join("etcd.log"),
            args: vec![
                "--name=bpfleet-test".into(),
                format!("--data-dir={}", root.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=bpfleet-test=http://127.0.0.1:{etcd_peer}"),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        };
        let etcd = etcd_cmd.spawn(false)?;
        let apiserver_cmd = Launch {
            name: "kube-apiserver",
            bin: apiserver_bin,
            log: root.join("apiserver.log"),
            args: vec![
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--cert-dir={}", root.join("certs").display()),
                format!("--tls-cert-file={}", tls_crt.display()),
                format!("--tls-private-key-file={}", tls_key.display()),
                format!("--client-ca-file={}", ca_crt.display()),
                format!("--service-account-key-file={}", sa_pub.display()),
                format!("--service-account-signing-key-file={}", sa_key.display()),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                "--service-cluster-ip-range=10.96.0.0/24".into(),
                "--authorization-mode=RBAC".into(),
                // No kubernetes Service endpoints for a loopback-only apiserver.
                "--endpoint-reconciler-type=none".into(),
                "--allow-privileged=false".into(),
                "--enable-priority-and-fairness=false".into(),
                "--v=1".into(),
            ],
        };
        let apiserver = match apiserver_cmd.spawn(false) {
            Ok(child) => child,
            Err(e) => {
                let mut etcd = etcd;
                stop_ref(&mut etcd);
                return Err(e);
            }
        };

        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = root.join("kubeconfig");
        let mut cp = ControlPlane {
            etcd: Some(etcd),
            apiserver: Some(apiserver),
            etcd_cmd,
            apiserver_cmd,
            etcd_url,
            server,
            kubeconfig,
            ca,
            dir,
        };
        cp.write_kubeconfig(&admin)?;
        cp.wait_ready().await?;
        Ok(cp)
    }

    fn write_kubeconfig(&self, admin: &pki::CertPair) -> Result<()> {
        let b64 = |s: &str| BASE64.encode(s.as_bytes());
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bpfleet-test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: bpfleet-admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: bpfleet-test\n  context:\n    cluster: bpfleet-test\n    user: bpfleet-admin\ncurrent-context: bpfleet-test\n",
            server = self.server,
            ca = b64(&self.ca.pair.cert_pem),
            cert = b64(&admin.cert_pem),
            key = b64(&admin.key_pem),
        );
        fs::write(&self.kubeconfig, text).map_err(io("writing the kubeconfig"))
    }

    /// A client authenticated as cluster admin.
    pub async fn client(&self) -> Result<kube::Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let mut last = String::from("not attempted");
        while started.elapsed() < READY_TIMEOUT {
            for (name, child) in [
                ("etcd", &mut self.etcd),
                ("kube-apiserver", &mut self.apiserver),
            ] {
                let Some(child) = child else {
                    return Err(Error::NotRunning(name));
                };
                if let Ok(Some(status)) = child.try_wait() {
                    let log = tail(&self.dir.path().join(log_name(name)), 8);
                    return Err(Error::Exited { name, status, log });
                }
            }
            match self.client().await {
                Ok(client) => {
                    let req = http_get("/readyz");
                    match client.request_text(req).await {
                        Ok(body) if body.trim() == "ok" => return Ok(()),
                        Ok(body) => last = body,
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(Error::Timeout {
            seconds: READY_TIMEOUT.as_secs(),
            last: format!("kube-apiserver /readyz on {}: {last}", self.server),
        })
    }

    /// `kubectl` with this control plane's kubeconfig.
    pub fn kubectl(&self) -> Result<Command> {
        let mut cmd = Command::new(binary("kubectl")?);
        cmd.env("KUBECONFIG", &self.kubeconfig);
        Ok(cmd)
    }

    /// Runs kubectl and returns its stdout, or its stderr as the error.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self
            .kubectl()?
            .args(args)
            .output()
            .map_err(io("running kubectl"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(Error::Kubectl {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// Applies every CRD in the repository's `crds/` and waits until each is
    /// Established.
    pub fn install_crds(&self) -> Result<()> {
        let crds = workspace_root().join("crds");
        let crds = crds.to_string_lossy();
        self.kubectl_ok(&["apply", "--server-side", "-f", &crds])?;
        self.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &crds,
        ])?;
        Ok(())
    }

    /// The directory holding certificates, logs and etcd data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl ControlPlane {
    /// Kills kube-apiserver (SIGKILL, reaped): its port stops answering and
    /// every watch and request of every client breaks, as when the
    /// apiserver's machine dies. etcd keeps running. A no-op when it is
    /// already stopped.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut child) = self.apiserver.take() {
            kill_now(&mut child);
        }
    }

    /// Starts kube-apiserver again with the flags, port and certificates it
    /// first started with (its log is appended to), and waits until its
    /// `/readyz` answers `ok`. Errors name the apiserver: it exited (with
    /// the log's last lines) or was not ready in time.
    pub async fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            return Err(Error::AlreadyRunning("kube-apiserver"));
        }
        self.apiserver = Some(self.apiserver_cmd.spawn(true)?);
        self.wait_ready().await
    }

    /// Whether kube-apiserver is running (not stopped by
    /// [`ControlPlane::stop_apiserver`]).
    pub fn apiserver_running(&self) -> bool {
        self.apiserver.is_some()
    }

    /// Kills etcd (SIGKILL, reaped) and starts it again on the same data
    /// directory and ports, then waits until etcd's own `/health` says
    /// `true` (and, when the apiserver runs, until the apiserver's `/readyz`
    /// is `ok` again). What etcd had stored is still there.
    pub async fn restart_etcd(&mut self) -> Result<()> {
        if let Some(mut child) = self.etcd.take() {
            kill_now(&mut child);
        }
        self.etcd = Some(self.etcd_cmd.spawn(true)?);
        self.wait_etcd_healthy().await?;
        if self.apiserver.is_some() {
            self.wait_ready().await?;
        }
        Ok(())
    }

    async fn wait_etcd_healthy(&mut self) -> Result<()> {
        let started = Instant::now();
        let addr = self.etcd_url.trim_start_matches("http://").to_string();
        let mut last = String::from("not attempted");
        while started.elapsed() < READY_TIMEOUT {
            if let Some(child) = self.etcd.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = tail(&self.dir.path().join(log_name("etcd")), 8);
                self.etcd = None;
                return Err(Error::Exited {
                    name: "etcd",
                    status,
                    log,
                });
            }
            match etcd_health(&addr) {
                Ok(body) if body.contains(r#""health":"true""#) => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::Timeout {
            seconds: READY_TIMEOUT.as_secs(),
            last: format!("etcd /health on {addr}: {last}"),
        })
    }
}

/// One GET of etcd's `/health` over plain HTTP on loopback; the body.
fn etcd_health(addr: &str) -> std::io::Result<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string())
}

/// A process of the control plane and how to start it.
struct Launch {
    name: &'static str,
    bin: PathBuf,
    log: PathBuf,
    args: Vec<String>,
}

impl Launch {
    /// Starts the process; `append` keeps the log of an earlier run.
    fn spawn(&self, append: bool) -> Result<Child> {
        spawn(self.name, &self.bin, &self.log, &self.args, append)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The apiserver first, so it does not log etcd errors on the way down.
        if let Some(c) = self.apiserver.as_mut() {
            stop_ref(c);
        }
        if let Some(c) = self.etcd.as_mut() {
            stop_ref(c);
        }
    }
}

fn kill_now(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn log_name(process: &str) -> &'static str {
    if process == "etcd" {
        "etcd.log"
    } else {
        "apiserver.log"
    }
}

fn spawn(name: &str, bin: &Path, log: &Path, args: &[String], append: bool) -> Result<Child> {
    let out = File::options()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(log)
        .map_err(io(format!("creating {}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(io(format!("opening {}", log.display())))?;
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // prctl(2), which is async-signal-safe. PR_SET_PDEATHSIG makes the kernel
    // kill the child if the test process dies without running Drop.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(io(format!("starting {name}")))
}

/// SIGTERM, up to five seconds of grace, then SIGKILL; always reaped.
fn stop_ref(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn http_get(path: &'static str) -> http::Request<Vec<u8>> {
    let mut req = http::Request::new(Vec::new());
    *req.uri_mut() = http::Uri::from_static(path);
    req
}
