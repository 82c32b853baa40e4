//! The Dockerfiles build workspace binaries (as `cargo metadata` lists
//! them) from digest-pinned bases, in multi-stage builds with known
//! instructions and exec-form entry points, tag the images the chart pulls,
//! install only packages `scripts/setup.sh` installs, and run the operator
//! as the user the chart's pod runs as.

use bpfleet_e2e::workspace_root;
use serde_json::Value;

use crate::support::{
    AGENT, OPERATOR, between, docs, named, read, render, strs, workspace_metadata,
};

#[test]
fn dockerfiles_build_workspace_binaries_from_pinned_bases() {
    let meta = workspace_metadata();
    let values: Value = serde_yaml::from_str(&read("charts/bpfleet/values.yaml")).unwrap();
    let setup = read("scripts/setup.sh");
    let setup_packages = between(&setup, "packages=(", ")");
    for (file, package, dir, binary, component) in [
        (
            "Dockerfile.operator",
            "bpfleet-operator",
            "operator",
            OPERATOR,
            "operator",
        ),
        (
            "Dockerfile.agent",
            "bpfleet-agent",
            "node-agent",
            AGENT,
            "agent",
        ),
    ] {
        let df = read(file);
        let pkg = meta["packages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == package)
            .unwrap_or_else(|| panic!("{file}: no workspace package {package}"));
        assert!(
            pkg["manifest_path"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/{dir}/Cargo.toml")),
            "{package} lives in {dir}/"
        );
        assert!(
            pkg["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == binary && strs(&t["kind"]).contains(&"bin".to_string())),
            "{file}: crate {package} ({dir}/) has no binary {binary} yet"
        );
        assert!(
            df.contains(&format!(
                "cargo build --release --locked -p {package} --bin {binary}"
            )),
            "{file} builds {binary} from {package}"
        );
        assert!(df.contains(&format!("target/release/{binary} /out/{binary}")));
        assert!(df.contains(&format!(
            "COPY --from=build /out/{binary} /usr/local/bin/{binary}"
        )));
        assert!(df.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")));
        // Syntax, as far as it can be checked without BuildKit: every
        // instruction is known, exec forms are JSON arrays, RUN --mount
        // comes with the dockerfile frontend that supports it.
        let mut logical = String::new();
        for line in df.lines() {
            let t = line.trim();
            if logical.is_empty() && (t.is_empty() || t.starts_with('#')) {
                continue;
            }
            logical.push_str(t.trim_end_matches('\\'));
            logical.push(' ');
            if t.ends_with('\\') {
                continue;
            }
            let (inst, rest) = logical.trim().split_once(' ').unwrap();
            assert!(
                [
                    "FROM",
                    "RUN",
                    "COPY",
                    "ARG",
                    "ENV",
                    "WORKDIR",
                    "LABEL",
                    "USER",
                    "EXPOSE",
                    "ENTRYPOINT",
                    "CMD"
                ]
                .contains(&inst),
                "{file}: unknown instruction {inst}"
            );
            if inst == "ENTRYPOINT" || inst == "CMD" {
                serde_json::from_str::<Vec<String>>(rest.trim())
                    .unwrap_or_else(|e| panic!("{file}: {inst} {rest} is not exec form: {e}"));
            }
            logical.clear();
        }
        assert!(logical.is_empty(), "{file} ends inside a continuation");
        if df.contains("--mount=type=cache") {
            assert!(
                df.starts_with("# syntax=docker/dockerfile:1."),
                "{file}: RUN --mount needs the syntax line"
            );
        }
        let froms: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
        assert!(froms.len() >= 2, "{file} is multi-stage");
        for f in &froms {
            // A base given as `${ARG}` is pinned by that argument's default:
            // the release build uses the defaults, the cluster test passes
            // bases made locally (e2e/cluster/images.sh).
            let named = f.split_whitespace().nth(1).unwrap();
            let image = match named.strip_prefix("${").and_then(|a| a.strip_suffix('}')) {
                Some(arg) => df
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("ARG {arg}=")))
                    .unwrap_or_else(|| panic!("{file}: {named} has no ARG default")),
                None => named,
            };
            let digest = image.split_once("@sha256:").map(|(_, d)| d).unwrap_or("");
            assert!(
                digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
                "{file}: {image} is not pinned by digest"
            );
        }
        // The documented build command tags the image the chart pulls.
        let repo = values[component]["image"]["repository"].as_str().unwrap();
        assert!(
            df.contains(&format!("docker build -f {file} -t {repo}:")),
            "{file}: build command tags {repo}"
        );
        assert!(
            std::fs::metadata(workspace_root().join(format!("{file}.dockerignore"))).is_ok(),
            "{file}.dockerignore keeps target/ out of the context"
        );
        // Build packages match the ones the repository builds with.
        if let Some(line) = df.lines().find(|l| l.contains("apt-get install")) {
            let list = line.split("--no-install-recommends").nth(1).unwrap();
            for p in list
                .split_whitespace()
                .take_while(|w| *w != "\\" && *w != "&&")
            {
                assert!(
                    setup_packages.split_whitespace().any(|s| s == p),
                    "{file} installs {p}, which scripts/setup.sh does not"
                );
            }
        }
    }
    assert!(
        read("Dockerfile.operator").contains("USER 65532:65532"),
        "operator image is non-root"
    );
    // The chart's operator pod runs as the image's user.
    let d = docs(&render(&[]));
    assert_eq!(
        named(&d, "Deployment", OPERATOR)["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        65532
    );
}
