//! Builds every `progs/*.bpf.c` into a CO-RE object in OUT_DIR.
//!
//! `vmlinux.h` is dumped from the running kernel's BTF with bpftool into
//! OUT_DIR (override the BTF file with `BPFLEET_VMLINUX_BTF`, the compiler
//! with `BPFLEET_CLANG`); libbpf's own headers come from libbpf-sys. Nothing
//! generated lands in the source tree.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    if let Err(e) = run() {
        println!("cargo:warning=bpfleet-bpf: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let libbpf_include = std::env::var("DEP_BPF_INCLUDE")
        .map_err(|_| "libbpf-sys did not export its include dir (DEP_BPF_INCLUDE)".to_string())?;
    let btf =
        std::env::var("BPFLEET_VMLINUX_BTF").unwrap_or_else(|_| "/sys/kernel/btf/vmlinux".into());
    let clang = std::env::var("BPFLEET_CLANG").unwrap_or_else(|_| "clang".into());
    println!("cargo:rerun-if-env-changed=BPFLEET_VMLINUX_BTF");
    println!("cargo:rerun-if-env-changed=BPFLEET_CLANG");
    println!("cargo:rerun-if-changed=include");
    println!("cargo:rerun-if-changed=progs");

    let vmlinux_dir = out.join("vmlinux");
    std::fs::create_dir_all(&vmlinux_dir).map_err(|e| e.to_string())?;
    let dump = Command::new("bpftool")
        .args(["btf", "dump", "file", &btf, "format", "c"])
        .output()
        .map_err(|e| format!("cannot run bpftool (install it: apt-get install bpftool): {e}"))?;
    if !dump.status.success() {
        return Err(format!(
            "bpftool btf dump file {btf} failed: {}",
            String::from_utf8_lossy(&dump.stderr)
        ));
    }
    std::fs::write(vmlinux_dir.join("vmlinux.h"), &dump.stdout).map_err(|e| e.to_string())?;

    let progs = manifest.join("progs");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&progs)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
        .collect();
    sources.sort();
    for src in &sources {
        compile(
            &clang,
            src,
            &out,
            &[
                &vmlinux_dir,
                &manifest.join("include"),
                &progs,
                Path::new(&libbpf_include),
            ],
        )?;
    }
    println!("cargo:include={}", manifest.join("include").display());
    Ok(())
}

fn compile(clang: &str, src: &Path, out: &Path, includes: &[&Path]) -> Result<(), String> {
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".bpf.c"))
        .ok_or_else(|| format!("bad source name {}", src.display()))?;
    let obj = out.join(format!("{name}.bpf.o"));
    let mut cmd = Command::new(clang);
    cmd.args([
        "-g",
        "-O2",
        "-target",
        "bpf",
        "-D__TARGET_ARCH_x86",
        "-Wall",
        "-Werror",
    ]);
    for inc in includes {
        cmd.arg("-I").arg(inc);
    }
    cmd.arg("-c").arg(src).arg("-o").arg(&obj);
    let res = cmd
        .output()
        .map_err(|e| format!("cannot run {clang} (install clang): {e}"))?;
    if !res.status.success() {
        return Err(format!(
            "{clang} failed on {}: {}",
            src.display(),
            String::from_utf8_lossy(&res.stderr)
        ));
    }
    Ok(())
}
