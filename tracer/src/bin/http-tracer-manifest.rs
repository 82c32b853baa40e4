//! `http-tracer-manifest (--object PATH | --image REF [--pull-secret S])
//! --sha256 HEX [--name N] [--version V]`: prints a TracerProgram (YAML)
//! that rolls the HTTP tracer object (a file on the nodes, or an image
//! pinned by digest) out to every node at once, listing the object's real
//! programs and the maps that must persist across revisions. The local
//! demo applies it.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut object = None;
    let mut image = None;
    let mut pull_secret = None;
    let mut sha256 = None;
    let mut name = "http-tracer".to_string();
    let mut version = "1.0.0".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or_else(|| format!("{flag} needs a value"));
        let r = match a.as_str() {
            "--object" => value("--object").map(|v| object = Some(v)),
            "--image" => value("--image").map(|v| image = Some(v)),
            "--pull-secret" => value("--pull-secret").map(|v| pull_secret = Some(v)),
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
                "usage: http-tracer-manifest (--object PATH | --image REF [--pull-secret S]) --sha256 HEX [--name N] [--version V]"
            );
            return ExitCode::from(2);
        }
    }
    let Some(sha256) = sha256 else {
        eprintln!("http-tracer-manifest: --sha256 is required");
        return ExitCode::from(2);
    };
    let bytecode = match (object, image) {
        (Some(o), None) if pull_secret.is_none() => format!("    file:\n      path: {o:?}"),
        (None, Some(i)) => match pull_secret {
            Some(s) => format!("    image:\n      reference: {i:?}\n      pullSecret: {s:?}"),
            None => format!("    image:\n      reference: {i:?}"),
        },
        _ => {
            eprintln!(
                "http-tracer-manifest: give --object or --image (--pull-secret goes with --image)"
            );
            return ExitCode::from(2);
        }
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
    println!("  bytecode:\n{bytecode}");
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
