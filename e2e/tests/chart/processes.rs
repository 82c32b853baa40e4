//! The real binaries, started and probed: builds the operator and agent
//! binaries with cargo, starts the agent with the arguments a render of the
//! chart gives (files it mounts written under a temporary root, addresses
//! moved to loopback), and the clients the tests speak to them with (plain
//! HTTP GET, an mTLS handshake through openssl). A started process is a
//! [`Running`], killed and reaped on drop. Asserts nothing about the chart
//! beyond what starting needs; the tests that use it do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bpfleet_e2e::{ControlPlane, workspace_root};
use bpfleet_testsupport::free_port;
use serde_json::{Value, json};

use crate::support::{AGENT, NS, OPERATOR, container, named, port_of, strs, text, write};

/// Builds the operator and agent binaries (one cargo invocation, so shared
/// dependencies are built once) and returns their paths by binary name, as
/// cargo reports them.
pub fn build_binaries() -> BTreeMap<String, PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--message-format=json"])
        .args(["-p", "bpfleet-operator", "--bin", OPERATOR])
        .args(["-p", "bpfleet-agent", "--bin", AGENT])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo build: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter_map(|m| {
            let exe = m["executable"].as_str()?;
            Some((
                m["target"]["name"].as_str()?.to_string(),
                PathBuf::from(exe),
            ))
        })
        .collect()
}

/// A child process, killed and reaped on drop; then the pin root it used
/// (if any) is removed, also when the test failed.
pub struct Running(pub std::process::Child, pub Option<std::path::PathBuf>);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(p) = &self.1 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// `path` opened for appending (created when missing), for a child's
/// stdout and stderr both: every write lands at the end, so the two streams
/// interleave whole lines instead of overwriting each other.
pub fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// `GET path` on 127.0.0.1:port: (status, body), None when nothing answers.
/// GET with retries: under a loaded CI machine a debug-build agent may take
/// a while to render its metrics.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    for attempt in 0..5 {
        if let Some(r) = http_get_once(port, path) {
            return Some(r);
        }
        std::thread::sleep(std::time::Duration::from_millis(500 * (attempt + 1)));
    }
    None
}

fn http_get_once(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// An mTLS handshake with openssl as the client, checking the server's
/// certificate for `name` against `ca`. Ok when the server keeps the
/// connection (it accepted the client certificate), Err(openssl's account)
/// when it ends it.
pub fn tls_client(
    port: u16,
    ca: &str,
    cert: Option<(&str, &str)>,
    name: &str,
) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let err = dir.path().join("stderr");
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args([
            "-CAfile",
            ca,
            "-verify_hostname",
            name,
            "-verify_return_error",
        ])
        .args(["-alpn", "h2", "-quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap());
    if let Some((c, k)) = cert {
        cmd.args(["-cert", c, "-key", k]);
    }
    let mut child = Running(cmd.spawn().expect("openssl is installed"), None);
    for _ in 0..30 {
        if let Ok(Some(_)) = child.0.try_wait() {
            return Err(std::fs::read_to_string(&err).unwrap_or_default());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(())
}

/// Writes the files a workload's container finds under /etc/bpfleet, as
/// the chart mounts them (volume by volume, key by key), below `root/etc`.
/// Secrets come from `tls` (a render in helm TLS mode; cert-manager writes
/// Secrets of the same names and keys).
pub fn materialize_mounts(d: &[Value], tls: &[Value], k: &str, workload: &str, root: &Path) {
    use base64::Engine;
    let c = container(d, workload, k);
    let volumes = named(d, k, workload)["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .clone();
    let put = |rel: String, bytes: &[u8]| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    };
    for m in c["volumeMounts"].as_array().unwrap() {
        let Some(sub) = m["mountPath"]
            .as_str()
            .unwrap()
            .strip_prefix("/etc/bpfleet/")
        else {
            continue;
        };
        let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
        if let Some(secret) = v["secret"]["secretName"].as_str() {
            for item in v["secret"]["items"].as_array().unwrap() {
                let (key, path) = (
                    item["key"].as_str().unwrap(),
                    item["path"].as_str().unwrap(),
                );
                let b64 = named(tls, "Secret", secret)["data"][key].as_str().unwrap();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap();
                put(format!("etc/{sub}/{path}"), &bytes);
            }
        } else if let Some(cm) = v["configMap"]["name"].as_str() {
            let rendered = d
                .iter()
                .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == cm);
            if let Some(rendered) = rendered {
                for (file, text) in rendered["data"].as_object().unwrap() {
                    put(
                        format!("etc/{sub}/{file}"),
                        text.as_str().unwrap().as_bytes(),
                    );
                }
            } else {
                // The user's own ConfigMap (agent.registries.caBundle): a
                // PEM bundle of CAs. The chart's TLS material has the only
                // CA certificate at hand.
                let b64 = named(tls, "Secret", &format!("{AGENT}-tls"))["data"]["ca.crt"]
                    .as_str()
                    .unwrap();
                let pem = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap();
                for item in v["configMap"]["items"].as_array().unwrap() {
                    put(
                        format!("etc/{sub}/{}", item["path"].as_str().unwrap()),
                        &pem,
                    );
                }
            }
        }
    }
}

/// The agent started with the arguments `d` renders, files from
/// [`materialize_mounts`] under `root`, addresses on loopback (the chart's
/// `--otlp-endpoint`, when it renders one, to `otlp` on loopback, else to a
/// port nothing listens on); returns the
/// process, its gRPC and metrics ports and its pin root once /api/health
/// answers 200 (with the body).
pub fn start_agent(
    d: &[Value],
    tls: &[Value],
    exe: &Path,
    root: &Path,
    otlp: Option<u16>,
) -> (Running, u16, u16, String, Value) {
    materialize_mounts(d, tls, "DaemonSet", AGENT, root);
    std::fs::create_dir_all(root.join("pods")).unwrap();
    let tmp = root.to_string_lossy().into_owned();
    let agent = container(d, AGENT, "DaemonSet");
    let pin_root = format!(
        "/sys/fs/bpf/bpfleet-chart-test-{}-{}",
        std::process::id(),
        free_port()
    );
    let (grpc, metrics) = (free_port(), free_port());
    let otlp = otlp.unwrap_or_else(free_port);
    let args: Vec<String> = strs(&agent["args"])
        .into_iter()
        .map(|a| {
            let a = a
                .replace("/sys/fs/bpf/bpfleet", &pin_root)
                .replace("=/etc/bpfleet/", &format!("={tmp}/etc/"))
                .replace("=/var/lib/bpfleet/", &format!("={tmp}/state/"))
                .replace("=/run/bpfleet/", &format!("={tmp}/run/"))
                .replace("=/var/log/pods", &format!("={tmp}/pods"))
                .replace(
                    &format!("0.0.0.0:{}", port_of(agent, "grpc")),
                    &format!("127.0.0.1:{grpc}"),
                )
                .replace(
                    &format!("0.0.0.0:{}", port_of(agent, "metrics")),
                    &format!("127.0.0.1:{metrics}"),
                );
            match a.split_once('=') {
                Some(("--otlp-endpoint", _)) => format!("--otlp-endpoint=http://127.0.0.1:{otlp}"),
                _ => a,
            }
        })
        .collect();
    for a in &args {
        assert!(
            !a.contains("0.0.0.0") && !a.contains("=/etc/"),
            "not rewritten: {a}"
        );
    }
    let log = root.join("agent.log");
    let child = Command::new(exe)
        .args(&args)
        .env("NODE_NAME", "chart-test")
        .stdout(log_file(&log))
        .stderr(log_file(&log))
        .spawn()
        .unwrap();
    let mut proc_ = Running(child, Some(std::path::PathBuf::from(&pin_root)));
    let probe = agent["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    for _ in 0..150 {
        if let Ok(Some(status)) = proc_.0.try_wait() {
            panic!(
                "the agent exited ({status}) with the chart's arguments {args:?}:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if let Some((200, body)) = http_get(metrics, probe) {
            let health = serde_json::from_str(&body).unwrap();
            return (proc_, grpc, metrics, pin_root, health);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!(
        "{probe} never answered 200:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The control plane side of a chart install on `cp`, with the operator
/// binary `exe` started as the chart's Deployment would run it: the
/// chart's namespace, ServiceAccounts and RBAC applied for real, a Node
/// `chart-node` whose agent answers mTLS on 127.0.0.1:`agent_grpc`, and the
/// operator acting as its ServiceAccount (kubeconfig impersonation) with
/// the chart's arguments, its files under `dir/operator` and its metrics
/// moved to a loopback port. Returns once its readiness probe answers 200:
/// the process, its log file, and (through [`OperatorRun::metrics`]) its
/// metrics port.
pub async fn start_operator(
    cp: &ControlPlane,
    d: &[Value],
    exe: &Path,
    dir: &Path,
    agent_grpc: u16,
) -> (OperatorRun, PathBuf) {
    cp.install_crds().expect("CRDs");
    cp.kubectl_ok(&["create", "namespace", NS]).unwrap();
    let rbac: Vec<Value> = d
        .iter()
        .filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .cloned()
        .collect();
    let f = write(
        dir,
        "rbac.json",
        &json!({"apiVersion": "v1", "kind": "List", "items": rbac}).to_string(),
    );
    cp.kubectl_ok(&["apply", "--server-side", "-f", &f])
        .expect("RBAC applies");
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "chart-node", "labels": {"kubernetes.io/os": "linux"},
                     "annotations": {"bpfleet.dev/agent-endpoint": format!("https://127.0.0.1:{agent_grpc}")}},
    });
    let f = write(dir, "node.json", &node.to_string());
    cp.kubectl_ok(&["apply", "--server-side", "-f", &f])
        .unwrap();

    let sa = format!("system:serviceaccount:{NS}:{OPERATOR}");
    let kc = std::fs::read_to_string(&cp.kubeconfig).unwrap();
    let kc = kc.replacen(
        "    client-key-data:",
        &format!("    as: {sa}\n    client-key-data:"),
        1,
    );
    let kubeconfig = write(dir, "operator.kubeconfig", &kc);
    let op_root = dir.join("operator");
    materialize_mounts(d, d, "Deployment", OPERATOR, &op_root);
    let op = container(d, OPERATOR, "Deployment");
    let metrics = free_port();
    let root = op_root.to_string_lossy().into_owned();
    let args: Vec<String> = strs(&op["args"])
        .into_iter()
        .map(|a| {
            a.replace("$(POD_NAMESPACE)", NS)
                .replace("$(POD_NAME)", "bpfleet-operator-0")
                .replace("=/etc/bpfleet/", &format!("={root}/etc/"))
                .replace(
                    &format!("0.0.0.0:{}", port_of(op, "metrics")),
                    &format!("127.0.0.1:{metrics}"),
                )
        })
        .collect();
    let log = dir.join("operator.log");
    let child = Command::new(exe)
        .args(&args)
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", NS)
        .env("POD_NAME", "bpfleet-operator-0")
        .env("RUST_LOG", "info")
        .stdout(log_file(&log))
        .stderr(log_file(&log))
        .spawn()
        .unwrap();
    let mut operator = OperatorRun {
        process: Running(child, None),
        metrics,
    };
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let ready = op["readinessProbe"]["httpGet"]["path"].as_str().unwrap();
    for _ in 0..150 {
        if let Ok(Some(s)) = operator.process.0.try_wait() {
            panic!("the operator exited ({s}) with {args:?}:\n{}", log_text());
        }
        if matches!(http_get(metrics, ready), Some((200, _))) {
            return (operator, log);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("{ready} never answered 200:\n{}", log_text());
}

/// The operator started by [`start_operator`], killed on drop.
pub struct OperatorRun {
    pub process: Running,
    /// Its metrics (and probe) port on 127.0.0.1.
    pub metrics: u16,
}
