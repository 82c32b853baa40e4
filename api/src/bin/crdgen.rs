//! Writes the CRD manifests under `crds/` and the Helm chart's
//! `charts/bpfleet/crds/` from the Rust types.
//!
//! `crdgen` rewrites the files in every `--out` directory; `crdgen --check`
//! only compares and exits 1 naming each stale file, for CI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Generate bpfleet's CRD manifests from the Rust API types")]
struct Args {
    /// Directories the YAML files are written to (repeat the flag for
    /// several; the default is the repository's and the chart's).
    #[arg(long, default_values = ["crds", "charts/bpfleet/crds"])]
    out: Vec<PathBuf>,
    /// Compare with the files in --out instead of writing; exit 1 if any differs.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut stale = 0;
    for (file, crd) in bpfleet_api::crdgen::all() {
        let text = match bpfleet_api::crdgen::render(&crd) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("crdgen: cannot render {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        for dir in &args.out {
            let path = dir.join(file);
            if args.check {
                let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
                if on_disk != text {
                    eprintln!(
                        "crdgen: {} is stale; run `cargo run -p bpfleet-api --bin crdgen`",
                        path.display()
                    );
                    stale += 1;
                }
            } else if let Err(e) = std::fs::write(&path, &text) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            } else {
                println!("wrote {}", path.display());
            }
        }
    }
    if stale > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
