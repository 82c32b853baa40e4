//! `bpfleet-controlplane`: runs the test control plane in the foreground for
//! the local demo and for poking at it by hand.
//!
//! It prints `KUBECONFIG=<path>` once the apiserver is ready, copies the
//! kubeconfig to `--kubeconfig` when given, and stops etcd and kube-apiserver
//! on SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Run a local etcd + kube-apiserver (built by e2e/controlplane/build.sh) until interrupted",
    after_help = "Binaries are taken from $BPFLEET_CONTROLPLANE_BIN or .cache/controlplane/bin."
)]
struct Args {
    /// Also write the admin kubeconfig here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Apply the CRDs in crds/ once the apiserver is ready.
    #[arg(long)]
    install_crds: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let cp = match bpfleet_e2e::ControlPlane::start().await {
        Ok(cp) => cp,
        Err(e) => {
            eprintln!("bpfleet-controlplane: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.kubeconfig
        && let Err(e) = std::fs::copy(&cp.kubeconfig, path)
    {
        eprintln!("bpfleet-controlplane: writing {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if args.install_crds
        && let Err(e) = cp.install_crds()
    {
        eprintln!("bpfleet-controlplane: {e}");
        return ExitCode::FAILURE;
    }
    let shown = args.kubeconfig.as_ref().unwrap_or(&cp.kubeconfig);
    println!("control plane ready at {}", cp.server);
    println!("KUBECONFIG={}", shown.display());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("bpfleet-controlplane: cannot watch SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopping control plane");
    drop(cp);
    ExitCode::SUCCESS
}
