//! `bpfleet-objects DIR`: writes every example BPF object this crate embeds
//! into DIR (created if missing) and prints one line per file. The demo
//! uses it to put objects where node agents can load them by path.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let dir = match (args.next(), args.next()) {
        (Some(d), None) if d != "-h" && d != "--help" => PathBuf::from(d),
        _ => {
            eprintln!(
                "usage: bpfleet-objects DIR\n\nWrites the example BPF objects (syscount, xdpcount, tccount, ucount, cgcount, the HTTP tracer, ...) into DIR."
            );
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("bpfleet-objects: creating {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (name, bytes) in bpfleet_bpf::OBJECTS {
        let path = dir.join(name);
        if let Err(e) = std::fs::write(&path, bytes) {
            eprintln!("bpfleet-objects: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
        println!("{} {} bytes", path.display(), bytes.len());
    }
    ExitCode::SUCCESS
}
