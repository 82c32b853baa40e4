//! `bpfleet-agent`: runs the node agent (`serve`) or calls one of its RPCs.

use clap::Parser;

use bpfleet_agent::cli::{Cli, Command, run_client};
use bpfleet_agent::{hooks, kernel};

/// The agent's own logs on stderr, as `--log-format` says; stdout is the
/// BPF log's (docs/logs.md).
fn init_logging(format: &str) {
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().flatten_event(true).init();
    } else {
        b.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_logging(&args.log_format);
            bpfleet_agent::fault::arm_from_env().map_err(anyhow::Error::msg)?;
            let keep_all = args.keep_all_capabilities;
            let http = args.http_config()?;
            let (cfg, listen) = args.split()?;
            // Setup (bpffs mount, BPF stats, probes, re-adoption) runs with
            // every capability, on this thread, before any other thread.
            let agent = bpfleet_agent::Agent::new(cfg)?;
            if !keep_all {
                let eff = kernel::caps::drop_capabilities(hooks::KEEP_AFTER_SETUP)?;
                tracing::info!(kept = ?hooks::cap_names(eff), "capabilities dropped after setup");
            }
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let shutdown = async {
                    let mut term = match tokio::signal::unix::signal(
                        tokio::signal::unix::SignalKind::terminate(),
                    ) {
                        Ok(s) => s,
                        Err(_) => return std::future::pending().await,
                    };
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                    tracing::info!("stopping; programs stay loaded and pinned");
                };
                bpfleet_agent::server::serve_with(agent, listen, http, shutdown).await
            })?;
        }
        other => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_client(other))?;
        }
    }
    Ok(())
}
