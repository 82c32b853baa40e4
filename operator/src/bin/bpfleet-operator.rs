//! `bpfleet-operator`: see `bpfleet-operator --help` and bpfleet_operator::run.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = bpfleet_operator::run::Args::parse();
    bpfleet_operator::run::init_tracing(&args.log_format);
    match bpfleet_operator::run::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "bpfleet-operator stopped");
            eprintln!("bpfleet-operator: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
