//! `kubectl bpfleet image push` against a real registry (Debian's
//! docker-registry, TLS from a private CA, basic auth): the printed
//! reference pulls back to the same object with the labels given, in both
//! formats; a wrong password fails with the registry's answer and never
//! prints the password.

// Test code: a failed setup panics, which is the report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use bpfleet_oci::{Credentials, Format, Pinned};
use bpfleet_testsupport::registry::{Registry, RegistryOpts};

const USER: &str = "ci-pusher";
const PASS: &str = "push-Pw-731";

fn push(
    reg: &Registry,
    obj: &std::path::Path,
    reference: &str,
    extra: &[&str],
    pass: &str,
) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-bpfleet"))
        .args(["image", "push"])
        .arg(obj)
        .arg(reference)
        .args([
            "--program",
            "count_getppid=tracepoint",
            "--map",
            "counts=array",
        ])
        .args(["--username", USER, "--registry-ca"])
        .arg(reg.ca_file())
        .args(extra)
        .env("BPFLEET_REGISTRY_PASSWORD", pass)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

#[tokio::test]
async fn pushed_images_pull_back_to_the_object_and_labels() {
    let reg = Registry::start(RegistryOpts {
        tls: true,
        users: vec![(USER.into(), PASS.into())],
    });
    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("syscount_v1.bpf.o");
    std::fs::write(&obj, bpfleet_bpf::SYSCOUNT_V1).unwrap();
    let client = reg.client();
    let creds = Credentials {
        username: USER.into(),
        password: PASS.into(),
    };
    for (format, want) in [("bpfman", Format::Bpfman), ("artifact", Format::Artifact)] {
        let out = push(
            &reg,
            &obj,
            &format!("{}/bpf/syscount:{format}", reg.host()),
            &["--format", format],
            PASS,
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reference = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("reference: "))
            .expect("a reference line")
            .to_string();
        let sha = stdout
            .lines()
            .find_map(|l| l.strip_prefix("sha256: "))
            .expect("a sha256 line");
        assert_eq!(
            sha,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                bpfleet_bpf::SYSCOUNT_V1
            ))
        );
        let pinned = Pinned::parse(&reference).unwrap();
        let pulled = client.pull(&pinned, Some(&creds), 16 << 20).await.unwrap();
        assert_eq!(pulled.object, bpfleet_bpf::SYSCOUNT_V1);
        assert_eq!(pulled.format, want);
        let programs = pulled.labels.programs.unwrap();
        assert_eq!(
            programs.get("count_getppid").map(String::as_str),
            Some("tracepoint")
        );
        assert_eq!(
            pulled
                .labels
                .maps
                .unwrap()
                .get("counts")
                .map(String::as_str),
            Some("array")
        );
    }

    let out = push(
        &reg,
        &obj,
        &format!("{}/bpf/syscount:x", reg.host()),
        &[],
        "not-the-password",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(
        !stderr.contains("not-the-password")
            && !String::from_utf8_lossy(&out.stdout).contains("not-the-password")
    );
    let out = push(
        &reg,
        &obj,
        &format!("{}/bpf/syscount@sha256:{}", reg.host(), "0".repeat(64)),
        &[],
        PASS,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("a digest is what the push prints"));
}
