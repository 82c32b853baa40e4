//! `bpfleet-agent`: runs the node agent (`serve`) or calls one of its RPCs.

use clap::Parser;

use bpfleet_agent::cli::{Cli, Command, run_client};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let (cfg, listen) = args.split()?;
            let agent =
                tokio::task::spawn_blocking(move || bpfleet_agent::Agent::new(cfg)).await??;
            let shutdown = async {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(s) => s,
                        Err(_) => return std::future::pending().await,
                    };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("stopping; programs stay loaded and pinned");
            };
            bpfleet_agent::server::serve(agent, listen, shutdown).await?;
        }
        other => run_client(other).await?,
    }
    Ok(())
}
