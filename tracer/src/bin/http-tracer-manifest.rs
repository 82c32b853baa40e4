//! `http-tracer-manifest --object PATH --sha256 HEX [--name N] [--version V]`:
//! prints a TracerProgram (YAML) that rolls the HTTP tracer object at PATH
//! out to every node at once, listing the object's real programs and the
//! maps that must persist across revisions. The local demo applies it.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut object = None;
    let mut sha256 = None;
    let mut name = "http-tracer".to_string();
    let mut version = "1.0.0".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        let r = match a.as_str() {
            "--object" => value("--object").map(|v| object = Some(v)),
            "--sha256" => value("--sha256").map(|v| sha256 = Some(v)),
            "--name" => value("--name").map(|v| name = v),
            "--version" => value("--version").map(|v| version = v),
            "-h" | "--help" => Err(String::new()),
            other => Err(format!("unknown argument {other}")),
        };
        if let Err(e) = r {
            if !e.is_empty() {
                eprintln!("http-tracer-manifest: {e}");
            }
            eprintln!(
                "usage: http-tracer-manifest --object PATH --sha256 HEX [--name N] [--version V]"
            );
            return ExitCode::from(2);
        }
    }
    let (Some(object), Some(sha256)) = (object, sha256) else {
        eprintln!("http-tracer-manifest: --object and --sha256 are required");
        return ExitCode::from(2);
    };
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        eprintln!("http-tracer-manifest: --sha256 must be 64 hex digits");
        return ExitCode::from(2);
    }
    println!("apiVersion: bpfleet.dev/v1alpha1");
    println!("kind: TracerProgram");
    println!("metadata:\n  name: {name}");
    println!("spec:");
    println!("  version: {version:?}");
    println!("  bytecode:\n    file:\n      path: {object:?}");
    println!("  sha256: {sha256}");
    println!("  programs:");
    for (prog, tp) in bpfleet_tracer::PROGRAMS {
        let (category, event) = tp.split_once('/').unwrap_or(("syscalls", tp));
        println!(
            "    - {{name: {prog}, type: Tracepoint, tracepoint: {{category: {category}, name: {event}}}}}"
        );
    }
    println!("  persistentMaps:");
    for m in bpfleet_tracer::PERSISTENT_MAPS {
        println!("    - {m}");
    }
    println!("  strategy:\n    immediate: {{}}");
    ExitCode::SUCCESS
}
