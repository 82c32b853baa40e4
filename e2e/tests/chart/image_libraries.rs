//! The final images carry every shared library the binaries load: the
//! DT_NEEDED closure of the built operator and agent, minus what the
//! distroless base ships, equals what each Dockerfile copies.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::processes::build_binaries;
use crate::support::{AGENT, OPERATOR, read, text};

/// Shared libraries in gcr.io/distroless/cc-debian12 (glibc, libgcc,
/// libstdc++, libgomp: the image's documented contents).
const DISTROLESS_CC: &[&str] = &[
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "libgcc_s.so.1",
    "libstdc++.so.6",
    "libgomp.so.1",
];

/// DT_NEEDED entries of an ELF file.
fn needed(path: &Path) -> BTreeSet<String> {
    let out = Command::new("readelf")
        .args(["-d", path.to_str().unwrap()])
        .output()
        .expect("readelf (binutils) is installed");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .map(|l| {
            l.split('[')
                .nth(1)
                .unwrap()
                .trim_end_matches(']')
                .to_string()
        })
        .collect()
}

#[test]
fn images_carry_every_library_the_binaries_need() {
    let binaries = build_binaries();
    for (file, bin) in [
        ("Dockerfile.operator", OPERATOR),
        ("Dockerfile.agent", AGENT),
    ] {
        let df = read(file);
        // Libraries the Dockerfile copies from the build stage.
        let copied: BTreeSet<String> = df
            .lines()
            .filter(|l| l.contains("cp -L "))
            .flat_map(|l| l.split_whitespace())
            .filter(|w| w.contains(".so"))
            .map(|w| w.rsplit('/').next().unwrap().to_string())
            .collect();
        let mut missing = Vec::new();
        let exe = binaries
            .get(bin)
            .unwrap_or_else(|| panic!("cargo built no {bin}: {binaries:?}"));
        let mut queue: Vec<String> = needed(exe).into_iter().collect();
        let mut seen = BTreeSet::new();
        while let Some(lib) = queue.pop() {
            if !seen.insert(lib.clone()) || DISTROLESS_CC.contains(&lib.as_str()) {
                continue;
            }
            if !copied.contains(&lib) {
                missing.push(lib.clone());
            }
            // What a copied library needs in turn (same Debian release).
            let host = Path::new("/usr/lib/x86_64-linux-gnu").join(&lib);
            if host.exists() {
                queue.extend(needed(&host));
            }
        }
        assert!(
            missing.is_empty(),
            "{file}: the final image lacks {missing:?} which {bin} loads"
        );
        for lib in &copied {
            assert!(
                seen.contains(lib),
                "{file} copies {lib}, which {bin} does not load"
            );
        }
    }
}
