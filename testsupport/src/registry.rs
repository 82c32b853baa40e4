//! A real OCI registry for the image tests: Debian's `docker-registry`
//! (distribution 2.8) started on loopback with a configuration of its own,
//! optionally with TLS from a throw-away CA and htpasswd basic auth. Storage,
//! configuration, certificates and log live in one temporary directory that
//! goes with the fixture. `stop` and `start_again` take the same registry
//! (port and storage) down and up, for "registry down mid-rollout" tests.
//!
//! It owns the registry process and its files, nothing else: pushing,
//! signing and pulling are the tests' (and [`crate::cosign`]'s) business.
//! Probes go through `curl` so that the registry is checked by a client
//! nobody here wrote.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The registry binary Debian's `docker-registry` package installs.
const BINARY: &str = "docker-registry";

/// How the registry is served.
#[derive(Clone, Debug, Default)]
pub struct RegistryOpts {
    /// HTTPS with a server certificate (127.0.0.1 and `localhost`) from a CA
    /// made for this registry alone; plain HTTP when false.
    pub tls: bool,
    /// Basic-auth users (name, password), stored bcrypt-hashed; no auth when
    /// empty.
    pub users: Vec<(String, String)>,
}

/// A `docker-registry serve` process on 127.0.0.1, killed (and its files
/// removed) on drop, or by the kernel if the test dies first.
pub struct Registry {
    port: u16,
    tls: bool,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Registry {
    /// Writes the configuration (and the CA, certificate and htpasswd file it
    /// needs), starts the registry on a free loopback port and waits until
    /// `/v2/` answers.
    pub fn start(opts: RegistryOpts) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bpfleet-registry-")
            .tempdir()
            .unwrap_or_else(|e| panic!("registry dir: {e}"));
        let port = crate::free_port();
        let root = dir.path();
        let storage = root.join("storage");
        std::fs::create_dir(&storage).unwrap_or_else(|e| panic!("registry storage: {e}"));

        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: {secret}\n",
            storage = storage.display(),
            secret = hex::encode(random_bytes(16)),
        );
        if opts.tls {
            let (ca_pem, cert_pem, key_pem) = loopback_pki();
            write(&root.join("ca.pem"), ca_pem.as_bytes());
            write(&root.join("server.pem"), cert_pem.as_bytes());
            write(&root.join("server-key.pem"), key_pem.as_bytes());
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                root.join("server.pem").display(),
                root.join("server-key.pem").display()
            ));
        }
        if !opts.users.is_empty() {
            let htpasswd = root.join("htpasswd");
            write(&htpasswd, htpasswd_lines(&opts.users).as_bytes());
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: bpfleet-test-registry\n    path: {}\n",
                htpasswd.display()
            ));
        }
        write(&root.join("config.yml"), config.as_bytes());

        let mut me = Self {
            port,
            tls: opts.tls,
            dir,
            child: None,
        };
        me.spawn();
        me
    }

    /// `127.0.0.1:PORT`, the host part of references to this registry.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A registry client that trusts this registry: its CA with TLS, plain
    /// HTTP for its host without.
    pub fn client(&self) -> bpfleet_oci::Registry {
        let opts = if self.tls {
            bpfleet_oci::RegistryOptions {
                ca_pems: vec![self.ca_pem()],
                ..Default::default()
            }
        } else {
            bpfleet_oci::RegistryOptions {
                insecure: vec![self.host()],
                ..Default::default()
            }
        };
        bpfleet_oci::Registry::new(&opts).unwrap_or_else(|e| panic!("registry client: {e}"))
    }

    /// The registry's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the registry serves HTTPS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// `https://127.0.0.1:PORT` (or `http://` without TLS).
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// The CA certificate (PEM) that signed the registry's server
    /// certificate. Panics for a registry started without TLS.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca_file()).unwrap_or_else(|e| panic!("registry CA: {e}"))
    }

    /// The file holding [`Registry::ca_pem`], for tools that take a path
    /// (`curl --cacert`, `cosign --registry-cacert`). Panics for a registry
    /// started without TLS.
    pub fn ca_file(&self) -> PathBuf {
        assert!(self.tls, "this registry was started without TLS: no CA");
        self.dir.path().join("ca.pem")
    }

    /// The registry's storage root (filesystem driver), for tests that
    /// tamper with stored blobs.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's own log (stdout and stderr of every start).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Whether the registry process is up (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the registry and waits until it is gone; storage, port and
    /// configuration are kept for [`Registry::start_again`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped registry again on the same port with the same
    /// storage, and waits until `/v2/` answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the registry is already running");
        self.spawn();
    }

    /// `GET path` (e.g. `/v2/`) with `curl`, trusting the registry's CA,
    /// with basic auth when `creds` are given and an `Accept` header when
    /// `accept` is. Returns the HTTP status and the body; panics when curl
    /// gets no HTTP answer at all (the registry is stopped, say).
    pub fn get(
        &self,
        path: &str,
        creds: Option<(&str, &str)>,
        accept: Option<&str>,
    ) -> (u16, Vec<u8>) {
        let mut args: Vec<String> = vec![
            "--silent".into(),
            "--show-error".into(),
            "--max-time".into(),
            "10".into(),
            "--output".into(),
            "-".into(),
            "--write-out".into(),
            "\n%{http_code}".into(),
        ];
        if self.tls {
            args.push("--cacert".into());
            args.push(self.ca_file().display().to_string());
        }
        if let Some((user, pass)) = creds {
            args.push("--user".into());
            args.push(format!("{user}:{pass}"));
        }
        if let Some(accept) = accept {
            args.push("--header".into());
            args.push(format!("Accept: {accept}"));
        }
        args.push(format!("{}{path}", self.base_url()));
        let out = Command::new("curl")
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("curl (apt-get install curl): {e}"));
        assert!(
            out.status.success(),
            "curl GET {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let split = out
            .stdout
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap_or_else(|| panic!("curl GET {path}: no status line"));
        let code = std::str::from_utf8(&out.stdout[split + 1..])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("curl GET {path}: bad status line"));
        (code, out.stdout[..split].to_vec())
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap_or_else(|e| panic!("registry log: {e}"));
        let log2 = log
            .try_clone()
            .unwrap_or_else(|e| panic!("registry log: {e}"));
        let mut cmd = Command::new(BINARY);
        cmd.arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls prctl(2), which is async-signal-safe. PR_SET_PDEATHSIG has
        // the kernel kill the registry if the test dies without running
        // Drop (it fires when the thread that started the registry ends,
        // which for a test is when the test does).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("{BINARY}: {e} (apt-get install docker-registry; scripts/setup.sh does)")
        });
        self.child = Some(child);
        self.wait_ready();
    }

    /// Polls `/v2/` until the registry answers (200, or 401 with auth).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "docker-registry exited ({status}) before serving:\n{}",
                    self.log_tail()
                );
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                let (code, _) = self.get("/v2/", None, None);
                if code == 200 || code == 401 {
                    return;
                }
                panic!(
                    "docker-registry answered /v2/ with {code}:\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "docker-registry did not listen on {} within 30s:\n{}",
                    self.host(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut f = std::fs::File::open("/dev/urandom").unwrap_or_else(|e| panic!("/dev/urandom: {e}"));
    std::io::Read::read_exact(&mut f, &mut buf).unwrap_or_else(|e| panic!("/dev/urandom: {e}"));
    buf
}

/// One bcrypt htpasswd line per user, made by `htpasswd -B` (apache2-utils):
/// the only hash distribution's htpasswd auth accepts. The password goes
/// through stdin, not the command line.
fn htpasswd_lines(users: &[(String, String)]) -> String {
    let mut lines = String::new();
    for (user, pass) in users {
        let mut child = Command::new("htpasswd")
            .args(["-n", "-i", "-B", user])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("htpasswd (apt-get install apache2-utils): {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            std::io::Write::write_all(&mut stdin, pass.as_bytes())
                .unwrap_or_else(|e| panic!("htpasswd stdin: {e}"));
        }
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("htpasswd: {e}"));
        assert!(
            out.status.success(),
            "htpasswd -B {user}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        lines.push_str(line.trim());
        lines.push('\n');
    }
    lines
}

/// A CA and a server certificate it signed for 127.0.0.1 (IP SAN) and
/// `localhost`: (CA PEM, certificate PEM, key PEM).
fn loopback_pki() -> (String, String, String) {
    let fail = |e: rcgen::Error| -> ! { panic!("registry certificates: {e}") };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail(e));
    ca_params.distinguished_name = common_name("bpfleet test registry CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap_or_else(|e| fail(e));
    let issuer = Issuer::new(ca_params, ca_key);

    // rcgen reads "127.0.0.1" as an IP address SAN, "localhost" as a DNS one.
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap_or_else(|e| fail(e));
    params.distinguished_name = common_name("127.0.0.1");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let key = KeyPair::generate().unwrap_or_else(|e| fail(e));
    let cert = params.signed_by(&key, &issuer).unwrap_or_else(|e| fail(e));
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}
