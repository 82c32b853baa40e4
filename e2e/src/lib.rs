//! bpfleet's test harness: a real Kubernetes control plane on loopback.
//!
//! [`ControlPlane`] starts etcd and kube-apiserver, both built from the Go
//! module proxy by `e2e/controlplane/build.sh` (the way controller-runtime's
//! envtest uses real binaries), with freshly generated certificates and an
//! admin kubeconfig, waits until the apiserver is ready, and stops both when
//! dropped — or when the test process dies, through `PR_SET_PDEATHSIG`.
//!
//! This crate owns process lifecycle and PKI for tests and the local demo; it
//! knows nothing of bpfleet's resources beyond installing `crds/`.

mod controlplane;
pub mod pki;

pub use controlplane::{ControlPlane, binary_dir, workspace_root};

/// Everything that can go wrong starting or driving the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "control-plane binary {0} not found; build it with `bash e2e/controlplane/build.sh` (or set BPFLEET_CONTROLPLANE_BIN)"
    )]
    MissingBinary(std::path::PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("{name} exited before the control plane was ready ({status}); last log lines:\n{log}")]
    Exited {
        name: &'static str,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("control plane not ready after {seconds}s: {last}")]
    Timeout { seconds: u64, last: String },
    #[error("{0} is not running (stopped by the test)")]
    NotRunning(&'static str),
    #[error("{0} is already running")]
    AlreadyRunning(&'static str),
    #[error("kubectl {args}: {stderr}")]
    Kubectl { args: String, stderr: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A process exited because its port was taken (by another process,
    /// between the moment the port was found free and its bind).
    pub fn is_port_taken(&self) -> bool {
        matches!(self, Error::Exited { log, .. } if log.contains("address already in use"))
    }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

#[cfg(test)]
mod tests {
    use super::Error;
    use std::os::unix::process::ExitStatusExt;

    fn exited(log: &str) -> Error {
        Error::Exited {
            name: "kube-apiserver",
            status: std::process::ExitStatus::from_raw(1 << 8),
            log: log.into(),
        }
    }

    #[test]
    fn only_a_bind_refusal_counts_as_a_taken_port() {
        let taken = "E1202 run.go:72] \"command failed\" err=\"failed to create listener: \
                     failed to listen on 127.0.0.1:41234: listen tcp 127.0.0.1:41234: bind: \
                     address already in use\"";
        assert!(exited(taken).is_port_taken());
        assert!(!exited("etcdserver: mvcc: database space exceeded").is_port_taken());
        assert!(!Error::NotRunning("etcd").is_port_taken());
    }
}
