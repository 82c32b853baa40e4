//! `kubectl bpfleet …`: see `kubectl bpfleet --help` and bpfleet_operator::plugin.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = bpfleet_operator::plugin::Cli::parse();
    match bpfleet_operator::plugin::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubectl-bpfleet: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
